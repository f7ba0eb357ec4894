"""Training throughput: our Learner (LMStage) vs a plain torch loop on transformers' LlamaForCausalLM.

Both sides start from the same random-init weights (ours → export_hf → LlamaForCausalLM, fp32),
train on the same batches (random token ids, labels = input ids, attention_mask all ones as the
pretrain collator passes it) with the same AdamW (lr constant 3e-4, betas (0.9, 0.95), weight
decay 0.01 on matrices only, grad clip 1.0). One "step" = forward + backward + clip + AdamW step.
Repeats of `--steps` steps are interleaved ours/HF; tokens/s and the ratio come from the same run.

MFU = achieved FLOP/s / matmul peak, achieved = tokens/s × (6·N + 12·L·d_attn·T) (the PaLM
convention: N = parameters used in matmuls incl. the lm_head, the attention term counts the full
T×T score and value products, no causal halving). The peak is measured here with a big torch.mm
on the same threads (under contention it reads low, so `mfu_vs_nominal` also divides by the
165 GFLOP/s ENVIRONMENT.md measured on an idle 2-core machine).

MiniMind's own code (`--minimind-path DIR`, a checkout of github.com/jingyaogong/minimind): its
`model/model_minimind.py` is imported from DIR and trained as its `trainer/train_pretrain.py` does on
CPU in fp32 (`model(ids, labels=ids)`, loss + aux_loss, backward, clip 1.0, torch's default AdamW) on
the same batches, with the same AdamW settings, interleaved with ours. Its current code is MiniMind-3's:
q/k RMSNorm in every attention, so our side of that comparison is the same shape with `qk_norm=True`,
loaded with MiniMind's own initial weights (the first losses must agree). Rows: `vs_minimind[]` with
`ours_tok_s, minimind_tok_s, ratio` (ours / MiniMind, median of per-repeat ratios). Nothing of the
checkout is copied into this repository; no test depends on it.

`--workload sft` (with `--minimind-path`) times the same comparison on SFT rows instead of full
pretraining blocks: the built-in synthetic math chats (40% with worked steps, as the headline's SFT)
rendered by MiniMind's own tokenizer from the checkout, loss on the assistant turns. MiniMind's
`SFTDataset` pads every row to one `max_seq_len`; its side gets the shortest one that keeps every row
whole (`minimind`), and, as a stronger peer than its trainer, rows padded to each batch's longest
(`minimind_trimmed`). Ours runs `LMStage` on the collated rows (padding and unlabelled positions
packed away). Rates count label tokens (the same work for every side).

Usage: python -m bench.train [--quick] [--append] [--presets minimind2-small,tiny] [--steps 3]
       [--minimind-path DIR] [--no-hf]
"""
from __future__ import annotations

import importlib
import statistics
import sys
import tempfile
from pathlib import Path

# Before torch loads OpenMP: the wait policy our actors use when processes take turns on the cores
# (bounded spinning; runtime/process.py), for both sides. OMP_WAIT_POLICY / GOMP_SPINCOUNT override it.
from runtime import set_openmp_env

if "torch" not in sys.modules:   # else imported by a bench script that set it before its torch import
    set_openmp_env(overlapping=False)

import numpy as np
import torch

from bench.common import (base_parser, emit, environment, interleaved, log, matmul_peak_flops,
                          max_rss_mb, setup)
from learner.config import OptimConfig
from learner.learner import Learner
from learner.stages import LMStage
from minimind.checkpoint import export_hf
from minimind.config import preset
from minimind.data.collate import collate_lm
from minimind.data.supervised import sft_example
from minimind.data.synthetic_math import generate_problems, sft_records
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import MiniMindTokenizer

NOMINAL_PEAK = 165e9  # fp32 GFLOP/s on 2 idle cores (shared/ENVIRONMENT.md)
SHAPES = {  # (batch, seq) per preset on CPU
    "minimind2-small": (4, 256),
    "tiny": (32, 256),
    "demo": (8, 256),
}


def matmul_params(model: MiniMindForCausalLM) -> int:
    """Parameters that take part in a matmul per token: every nn.Linear (the tied lm_head counted
    once as a matmul; the embedding lookup is not a matmul)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(model: MiniMindForCausalLM, seq: int) -> float:
    c = model.config
    return 6.0 * matmul_params(model) + 12.0 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * seq


def hf_optimizer(model: torch.nn.Module, oc: OptimConfig) -> torch.optim.Optimizer:
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": oc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=oc.lr, betas=(oc.beta1, oc.beta2))


OPTIM = OptimConfig(lr=3e-4, weight_decay=0.01, beta1=0.9, beta2=0.95, warmup_steps=0, total_steps=10**6,
                    min_lr_ratio=1.0, grad_clip=1.0)


def shape(name: str, args) -> tuple[int, int]:
    B, T = SHAPES.get(name, (4, 256))
    return args.batch or B, args.seq or T


def make_batches(vocab: int, B: int, T: int, args) -> list[dict]:
    gen = torch.Generator().manual_seed(args.seed + 1)
    out = []
    for _ in range(args.steps * (args.repeats + args.warmup) + 1):
        ids = torch.randint(3, vocab, (B, T), generator=gen)
        out.append({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones(B, T, dtype=torch.long)})
    return out


def peer_step(model: torch.nn.Module, forward) -> callable:
    """A plain torch training step on a peer model: forward (-> loss), backward, clip, AdamW."""
    opt = hf_optimizer(model, OPTIM)

    def step(b: dict) -> float:
        opt.zero_grad(set_to_none=True)
        loss = forward(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM.grad_clip)
        opt.step()
        return float(loss.detach())
    return step


def time_pair(name: str, ours: MiniMindForCausalLM, peer: str, step, args) -> tuple[dict, dict]:
    """Our Learner vs a peer's `step` on the same batches, interleaved: (timings, first losses)."""
    B, T = shape(name, args)
    learner = Learner(ours, LMStage(), OPTIM)
    batches = make_batches(ours.config.vocab_size, B, T, args)
    # sanity: identical weights and batch give the same first loss on both sides
    first = {"ours": learner.train_step(batches[0])["loss"], peer: step(batches[0])}
    pos = {"ours": 1, peer: 1}

    def run(side):
        def go():
            for _ in range(args.steps):
                b = batches[pos[side] % len(batches)]
                pos[side] += 1
                learner.train_step(b) if side == "ours" else step(b)
        return go

    tokens = float(args.steps * B * T)
    log(f"[{name}] ours vs {peer}: batch {B} x seq {T}, {args.steps} steps per repeat ...")
    r = interleaved({"ours": run("ours"), peer: run(peer)}, repeats=args.repeats, warmup=args.warmup,
                    work={"ours": tokens, peer: tokens})
    return r, first


def bench_preset(name: str, args, tmp: Path, peak: float) -> dict:
    import transformers

    B, T = shape(name, args)
    torch.manual_seed(args.seed)
    ours = MiniMindForCausalLM(preset(name))
    folder = export_hf(ours, tmp / name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    hf.train()
    step = peer_step(hf, lambda b: hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                      labels=b["labels"]).loss)
    r, first = time_pair(name, ours, "hf", step, args)
    fpt = flops_per_token(ours, T)
    row = {"preset": name, "params_m": round(ours.num_parameters() / 1e6, 2),
           "matmul_params_m": round(matmul_params(ours) / 1e6, 2), "batch": B, "seq": T,
           "steps_per_repeat": args.steps, "first_loss": {k: round(v, 5) for k, v in first.items()},
           "ours_tok_s": r["ours"]["rate"], "hf_tok_s": r["hf"]["rate"], "ratio": r["ratio"], "ratios": r["ratios"],
           "ours_s": r["ours"]["seconds"], "hf_s": r["hf"]["seconds"],
           "flops_per_token": fpt,
           "ours_mfu": round(r["ours"]["rate"] * fpt / peak, 4), "hf_mfu": round(r["hf"]["rate"] * fpt / peak, 4),
           "ours_mfu_vs_nominal": round(r["ours"]["rate"] * fpt / NOMINAL_PEAK, 4),
           "hf_mfu_vs_nominal": round(r["hf"]["rate"] * fpt / NOMINAL_PEAK, 4),
           "ours_peak_rss_mb": r["ours"]["peak_rss_mb"], "hf_peak_rss_mb": r["hf"]["peak_rss_mb"]}
    log(f"    ours {row['ours_tok_s']} tok/s (MFU {row['ours_mfu']}), hf {row['hf_tok_s']} tok/s, ratio {row['ratio']}")
    return row


def minimind_model_code(path: str):
    """MiniMind's `model/model_minimind.py` from a checkout at `path` (imported, never copied)."""
    root = Path(path).expanduser().resolve()
    if not (root / "model" / "model_minimind.py").is_file():
        raise SystemExit(f"--minimind-path {path}: no model/model_minimind.py there (a checkout of "
                         f"github.com/jingyaogong/minimind)")
    sys.path.insert(0, str(root))
    return importlib.import_module("model.model_minimind")


def minimind_pair(name: str, args, code) -> tuple[MiniMindForCausalLM, callable]:
    """(ours, a training step on MiniMind's model) of preset `name` with q/k norm and MiniMind's initial
    weights; the step calls the model as trainer/train_pretrain.py and train_full_sft.py do."""
    c = preset(name, qk_norm=True)
    torch.manual_seed(args.seed)
    theirs = code.MiniMindForCausalLM(code.MiniMindConfig(
        hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, intermediate_size=c.intermediate_size, vocab_size=c.vocab_size,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, max_position_embeddings=c.max_position_embeddings,
        dropout=0.0, flash_attn=True)).float()
    theirs.train()
    ours = MiniMindForCausalLM(c)
    ours.load_state_dict(theirs.state_dict(), strict=False)   # their non-persistent rope tables are not in it
    missing = {k for k in ours.state_dict()} - {k for k in theirs.state_dict()}
    if missing:
        raise SystemExit(f"MiniMind's model at --minimind-path lacks {sorted(missing)[:3]}: another layout")

    def forward(b):
        res = theirs(b["input_ids"], labels=b["labels"])
        return res.loss + res.aux_loss
    return ours, peer_step(theirs, forward)


def bench_vs_minimind(name: str, args, code, peak: float) -> dict:
    """Ours vs MiniMind's model code, same shape and initial weights, trained as MiniMind's pretrain loop."""
    B, T = shape(name, args)
    ours, peer = minimind_pair(name, args, code)
    r, first = time_pair(name, ours, "minimind", peer, args)
    fpt = flops_per_token(ours, T)
    row = {"preset": name, "qk_norm": True, "batch": B, "seq": T, "steps_per_repeat": args.steps,
           "first_loss": {k: round(v, 5) for k, v in first.items()},
           "ours_tok_s": r["ours"]["rate"], "minimind_tok_s": r["minimind"]["rate"], "ratio": r["ratio"],
           "ratios": r["ratios"], "ours_s": r["ours"]["seconds"], "minimind_s": r["minimind"]["seconds"],
           "ours_mfu": round(r["ours"]["rate"] * fpt / peak, 4),
           "minimind_mfu": round(r["minimind"]["rate"] * fpt / peak, 4),
           "ours_peak_rss_mb": r["ours"]["peak_rss_mb"], "minimind_peak_rss_mb": r["minimind"]["peak_rss_mb"]}
    log(f"    ours {row['ours_tok_s']} tok/s, MiniMind's code {row['minimind_tok_s']} tok/s, ratio {row['ratio']}")
    return row


def sft_rows(minimind_root: Path, n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of `n` built-in SFT chats rendered by MiniMind's tokenizer and template."""
    tok = MiniMindTokenizer.load(minimind_root / "model")
    chats = sft_records(generate_problems(n, seed=seed), worked_fraction=0.4)
    return [sft_example(tok, c["conversations"], max_len=4096) for c in chats]


def padded(rows: list[tuple[list[int], list[int]]], length: int | None = None) -> dict:
    """Rows right-padded to `length` (None: the longest row), labels -100 on the padding."""
    items = [{"input_ids": np.asarray(i), "labels": np.asarray(lab)} for i, lab in rows]
    b = collate_lm(items)
    if length is not None:
        extra = length - b["input_ids"].shape[1]
        b = {k: torch.nn.functional.pad(v, (0, extra), value=-100 if k == "labels" else 0) for k, v in b.items()}
    return b


def bench_vs_minimind_sft(name: str, args, code) -> dict:
    """Ours vs MiniMind's model code on SFT rows: its fixed-length padding, and rows trimmed per batch."""
    B = args.batch or 16                           # trainer/train_full_sft.py's default batch
    n_batches = args.steps * (args.repeats + args.warmup) + 1
    rows = sft_rows(Path(args.minimind_path).expanduser(), B * n_batches, args.seed)
    fixed = max(len(i) for i, _ in rows)          # the shortest max_seq_len that keeps every row whole
    groups = [rows[i * B:(i + 1) * B] for i in range(n_batches)]
    trimmed, fixed_b = [padded(g) for g in groups], [padded(g, fixed) for g in groups]
    ours, peer = minimind_pair(name, args, code)
    learner = Learner(ours, LMStage(), OPTIM)
    first = {"ours": learner.train_step(trimmed[0])["loss"], "minimind": peer(fixed_b[0])}
    pos = {"ours": 1, "minimind": 1, "minimind_trimmed": 1}
    data = {"ours": trimmed, "minimind": fixed_b, "minimind_trimmed": trimmed}

    def run(side):
        def go():
            for _ in range(args.steps):
                b = data[side][pos[side] % n_batches]
                pos[side] += 1
                learner.train_step(b) if side == "ours" else peer(b)
        return go
    labels = float(sum(int((b["labels"][:, 1:] != -100).sum()) for b in trimmed[1:1 + args.steps]))
    lengths = [len(i) for i, _ in rows]
    log(f"[{name} sft] batch {B}, rows of {min(lengths)}-{max(lengths)} tokens (MiniMind pads to {fixed}) ...")
    r = interleaved({k: run(k) for k in data}, repeats=args.repeats, warmup=args.warmup,
                    work={k: labels for k in data})

    def ratio(peer_side: str) -> float:   # median of the per-repeat ratios, as `interleaved` gives for two sides
        return round(statistics.median(a / b for a, b in zip(r["ours"]["rates"], r[peer_side]["rates"])), 3)
    row = {"preset": name, "qk_norm": True, "workload": "sft", "batch": B, "row_tokens_min_mean_max":
           [min(lengths), round(statistics.mean(lengths), 1), max(lengths)], "minimind_pads_to": fixed,
           "steps_per_repeat": args.steps, "first_loss": {k: round(v, 5) for k, v in first.items()},
           "ours_label_tok_s": r["ours"]["rate"], "minimind_label_tok_s": r["minimind"]["rate"],
           "minimind_trimmed_label_tok_s": r["minimind_trimmed"]["rate"],
           "ratio": ratio("minimind"), "ratio_vs_trimmed": ratio("minimind_trimmed"),
           "ours_s": r["ours"]["seconds"], "minimind_s": r["minimind"]["seconds"],
           "minimind_trimmed_s": r["minimind_trimmed"]["seconds"]}
    log(f"    ours {row['ours_label_tok_s']} label tok/s, MiniMind {row['minimind_label_tok_s']} "
        f"(trimmed {row['minimind_trimmed_label_tok_s']}): ratio {row['ratio']} / {row['ratio_vs_trimmed']}")
    return row


def main() -> None:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--presets", default="minimind2-small,tiny")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per timed repeat (default 3, quick 1)")
    p.add_argument("--batch", type=int, default=None, help="override the per-preset batch")
    p.add_argument("--seq", type=int, default=None, help="override the per-preset sequence length")
    p.add_argument("--minimind-path", default=None,
                   help="a checkout of github.com/jingyaogong/minimind: also time ours vs its model code")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    p.add_argument("--workload", default="pretrain", choices=("pretrain", "sft", "both"),
                   help="what the MiniMind comparison trains on: full pretraining blocks, SFT rows, or both")
    args = p.parse_args()
    setup(args)
    code = minimind_model_code(args.minimind_path) if args.minimind_path else None
    if args.steps is None:
        args.steps = 1 if args.quick else 3
    if args.quick and args.seq is None:
        args.seq = 128
    peak_before = matmul_peak_flops()
    result = {"bench": "train", "quick": args.quick, "env": environment(), "repeats": args.repeats,
              "optimizer": "AdamW lr 3e-4 const, betas (0.9,0.95), wd 0.01 on matrices, clip 1.0, fp32",
              "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        # peak measured before and after; the higher one (less disturbed) is the denominator
        names = args.presets.split(",")
        rows = [] if args.no_hf else [bench_preset(name, args, Path(tmp), peak_before) for name in names]
        vs_minimind = []
        if code and args.workload in ("pretrain", "both"):
            vs_minimind += [bench_vs_minimind(name, args, code, peak_before) for name in names]
        if code and args.workload in ("sft", "both"):
            vs_minimind += [bench_vs_minimind_sft(name, args, code) for name in names]
    peak = max(peak_before, matmul_peak_flops())
    for row in rows:
        for side in ("ours", "hf"):
            row[f"{side}_mfu"] = round(row[f"{side}_tok_s"] * row["flops_per_token"] / peak, 4)
    if code:
        result["vs_minimind"] = vs_minimind
    result["matmul_peak_gflops"] = round(peak / 1e9, 1)
    result["nominal_peak_gflops"] = NOMINAL_PEAK / 1e9
    result["results"] = rows
    result["process_max_rss_mb"] = round(max_rss_mb(), 1)
    emit(result, args.append)


if __name__ == "__main__":
    main()
