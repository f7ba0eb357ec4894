"""Sampling throughput: our native engine (minimind.generate) vs transformers `generate()`.

Same random-init weights (ours → export_hf → AutoModelForCausalLM, fp32, eval), same prompts,
same sampling (temperature 1, top_k 0, top_p 1, do_sample), both forced to produce exactly
`max_new_tokens` tokens per row (ours: stop_token_ids=(); HF: eos_token_id=None). HF gets the
prompts left-padded (padding_side left, pad_token_id) and `num_return_sequences=G`; ours gets
the raw prompt lists and `SamplingParams.n=G`.

batch = prompts × G rows decoded together. Default configs per preset: batch 1 (1 prompt, G=1),
batch 16 (2 prompts × G=8), batch 64 (8 prompts × G=8) and batch 64 as 64 prompts × G=1.

Usage: python bench/generate.py [--quick] [--append] [--presets tiny,minimind2-small]
       [--batches 1,16,64] [--group 8] [--new-tokens 128] [--repeats 3]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # do not let bench/*.py shadow top-level modules
sys.path.insert(0, str(ROOT))
# Before torch loads OpenMP: the wait policy our actors use when processes take turns on the cores
# (bounded spinning; minimind/omp.py), for both sides. OMP_WAIT_POLICY / GOMP_SPINCOUNT override it.
from minimind.omp import set_openmp_env  # noqa: E402

set_openmp_env(overlapping=False)

import torch  # noqa: E402

from bench.common import base_parser, emit, environment, interleaved, log, max_rss_mb, setup  # noqa: E402
from minimind.checkpoint import export_hf  # noqa: E402
from minimind.config import preset  # noqa: E402
from minimind.generate import SamplingParams, generate  # noqa: E402
from minimind.model import MiniMindForCausalLM  # noqa: E402


def vllm_status() -> str:
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything else
        return "not installed" if isinstance(e, ModuleNotFoundError) else f"import failed: {type(e).__name__}"
    return f"installed {getattr(vllm, '__version__', '?')} (not benchmarked by this script)"


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


def bench_preset(name: str, configs: list[tuple[int, int]], new_tokens: int, args, tmp: Path) -> list[dict]:
    import transformers

    torch.manual_seed(args.seed)
    cfg = preset(name)  # vocab 6400, random init
    ours = MiniMindForCausalLM(cfg).eval()
    folder = export_hf(ours, tmp / name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # never stop early: exactly max_new_tokens per row
    pad = cfg.pad_token_id
    gen = torch.Generator().manual_seed(args.seed + 1)
    rows = []
    for n_prompts, G in configs:
        prompts = make_prompts(n_prompts, cfg.vocab_size, args.prompt_min, args.prompt_max, gen)
        sp = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, top_p=1.0, top_k=0, n=G,
                            stop_token_ids=())
        ids, mask = hf_inputs(prompts, pad)
        B = n_prompts * G

        def run_ours():
            out = generate(ours, prompts, sp, pad_id=pad)
            assert out.response_ids.shape == (B, new_tokens) and out.new_tokens == B * new_tokens, out.response_ids.shape
            return out

        def run_hf():
            with torch.inference_mode():
                out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                  top_p=1.0, max_new_tokens=new_tokens, num_return_sequences=G,
                                  pad_token_id=pad, eos_token_id=None)
            assert out.shape == (B, ids.shape[1] + new_tokens), out.shape
            return out

        tokens = float(B * new_tokens)
        log(f"[{name}] batch {B} = {n_prompts} prompts x G={G}, {new_tokens} new tokens ...")
        r = interleaved({"ours": run_ours, "hf": run_hf}, repeats=args.repeats, warmup=args.warmup,
                        work={"ours": tokens, "hf": tokens})
        row = {"preset": name, "params_m": round(ours.num_parameters() / 1e6, 2), "batch": B,
               "prompts": n_prompts, "G": G, "new_tokens": new_tokens,
               "prompt_len": [min(map(len, prompts)), max(map(len, prompts))],
               "ours_tok_s": r["ours"]["rate"], "hf_tok_s": r["hf"]["rate"], "ratio": r["ratio"],
               "ratios": r["ratios"], "ours_s": r["ours"]["seconds"], "hf_s": r["hf"]["seconds"],
               "ours_peak_rss_mb": r["ours"]["peak_rss_mb"], "hf_peak_rss_mb": r["hf"]["peak_rss_mb"]}
        log(f"    ours {row['ours_tok_s']} tok/s, hf {row['hf_tok_s']} tok/s, ratio {row['ratio']}")
        rows.append(row)
    return rows


def main() -> None:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,minimind2-small")
    p.add_argument("--batches", default=None, help="rows per run, comma separated (default 1,16,64; quick 1,16)")
    p.add_argument("--group", type=int, default=8, help="G completions per prompt (capped at the batch)")
    p.add_argument("--no-wide", action="store_true", help="skip the extra '64 prompts x G=1' config")
    p.add_argument("--new-tokens", type=int, default=None, help="default 128 (quick 32)")
    p.add_argument("--prompt-min", type=int, default=8)
    p.add_argument("--prompt-max", type=int, default=32)
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
              "batch_definition": "rows decoded together = prompts x G", "vllm": vllm_status(), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            result["results"].extend(bench_preset(name, configs, new_tokens, args, Path(tmp)))
    result["process_max_rss_mb"] = round(max_rss_mb(), 1)
    emit(result, args.append)


if __name__ == "__main__":
    main()
