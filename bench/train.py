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

Usage: python -m bench.train [--quick] [--append] [--presets minimind2-small,tiny] [--steps 3]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

# Before torch loads OpenMP: the wait policy our actors use when processes take turns on the cores
# (bounded spinning; runtime/process.py), for both sides. OMP_WAIT_POLICY / GOMP_SPINCOUNT override it.
from runtime import set_openmp_env

if "torch" not in sys.modules:   # else imported by a bench script that set it before its torch import
    set_openmp_env(overlapping=False)

import torch

from bench.common import (base_parser, emit, environment, interleaved, log, matmul_peak_flops,
                          max_rss_mb, setup)
from learner.config import OptimConfig
from learner.learner import Learner
from learner.stages import LMStage
from minimind.checkpoint import export_hf
from minimind.config import preset
from minimind.model import MiniMindForCausalLM

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


def bench_preset(name: str, args, tmp: Path, peak: float) -> dict:
    import transformers

    B, T = SHAPES.get(name, (4, 256))
    if args.batch:
        B = args.batch
    if args.seq:
        T = args.seq
    torch.manual_seed(args.seed)
    ours = MiniMindForCausalLM(preset(name))
    folder = export_hf(ours, tmp / name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    hf.train()
    oc = OptimConfig(lr=3e-4, weight_decay=0.01, beta1=0.9, beta2=0.95, warmup_steps=0, total_steps=10**6,
                     min_lr_ratio=1.0, grad_clip=1.0)
    learner = Learner(ours, LMStage(), oc)
    opt = hf_optimizer(hf, oc)

    gen = torch.Generator().manual_seed(args.seed + 1)
    n_batches = args.steps * (args.repeats + args.warmup) + 1
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(3, ours.config.vocab_size, (B, T), generator=gen)
        batches.append({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones(B, T, dtype=torch.long)})

    def hf_step(b):
        opt.zero_grad(set_to_none=True)
        loss = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), oc.grad_clip)
        opt.step()
        return float(loss.detach())

    # sanity: identical weights and batch give the same first loss on both sides
    first = {"ours": learner.train_step(batches[0])["loss"], "hf": hf_step(batches[0])}
    pos = {"ours": 1, "hf": 1}

    def run(side):
        def go():
            for _ in range(args.steps):
                b = batches[pos[side] % len(batches)]
                pos[side] += 1
                learner.train_step(b) if side == "ours" else hf_step(b)
        return go

    tokens = float(args.steps * B * T)
    log(f"[{name}] batch {B} x seq {T}, {args.steps} steps per repeat ...")
    r = interleaved({"ours": run("ours"), "hf": run("hf")}, repeats=args.repeats, warmup=args.warmup,
                    work={"ours": tokens, "hf": tokens})
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


def main() -> None:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--presets", default="minimind2-small,tiny")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per timed repeat (default 3, quick 1)")
    p.add_argument("--batch", type=int, default=None, help="override the per-preset batch")
    p.add_argument("--seq", type=int, default=None, help="override the per-preset sequence length")
    args = p.parse_args()
    setup(args)
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
        rows = [bench_preset(name, args, Path(tmp), peak_before) for name in args.presets.split(",")]
    peak = max(peak_before, matmul_peak_flops())
    for row in rows:
        for side in ("ours", "hf"):
            row[f"{side}_mfu"] = round(row[f"{side}_tok_s"] * row["flops_per_token"] / peak, 4)
    result["matmul_peak_gflops"] = round(peak / 1e9, 1)
    result["nominal_peak_gflops"] = NOMINAL_PEAK / 1e9
    result["results"] = rows
    result["process_max_rss_mb"] = round(max_rss_mb(), 1)
    emit(result, args.append)


if __name__ == "__main__":
    main()
