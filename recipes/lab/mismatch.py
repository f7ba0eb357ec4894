"""How far the rollout's logprobs are from the learner's on the lab's batch, by source, and the truncated
importance weights (learner.losses.tis) each source would give. The learner's own view is its fp32
forward over the whole batch at the batch's temperature; each source is another view of the same tokens:

- engine: the logprobs the rollout engine returned while sampling (its numerics: KV cache, batched
  decoding, left padding; int8 when the batch was sampled with --rollout.quantize int8);
- int8: the dynamic-int8 copy rollouts can sample with, scoring the same tokens in one forward (an int8
  engine's own logprobs also depend on the rows decoded with each token, minimind.quantize);
- micro_batch_N: the learner's forward in micro-batches of N rows (rounding changes with the batch shape);
- temperature: sampled at a temperature the learner did not apply (the batch's own if it is not 1, else
  --alt-temperature), the learner scoring at 1;
- top_p: sampled with nucleus --alt-top-p, the learner scoring the full softmax (tokens outside the
  nucleus could not have been sampled: they are left out and counted);
- turns: for multi-turn (tool) batches, the engine's gap per assistant turn and at turn starts (the
  tokens right after an observation), where the learner scores the whole episode in one forward.

Each gap is rollout − learner per token; the weights are min(exp(learner − rollout), C) per token and
per response (the product of its token ratios), as --update.tis-cap C applies them."""
from __future__ import annotations

import copy
from typing import Any

import torch

from contract.batch import RolloutBatch
from learner.losses import logprobs_from_logits, mismatch_stats, tis_weights
from minimind.generate import SamplingParams, process_logits
from minimind.quantize import quantize_int8
from recipes.lab.config import LabConfig
from recipes.lab.scoring import batch_logprobs, chunked_logits


def source_stats(old: torch.Tensor, rollout: torch.Tensor, mask: torch.Tensor, cap: float) -> dict[str, Any]:
    """Gap and TIS weights of one source (`old`: the learner's logprobs; `rollout`: the source's)."""
    out: dict[str, Any] = {"tokens": int(mask.sum()),
                           **{k: float(v) for k, v in mismatch_stats(old, rollout, mask).items()}}
    for level in ("token", "sequence"):
        w, stats = tis_weights(old, rollout, mask, cap, level)
        on = mask.bool() if level == "token" else mask.sum(-1) > 0
        seen = w[on] if bool(on.any()) else torch.ones(1)
        out[f"tis_{level}"] = {"weight_mean": stats["tis_weight_mean"], "truncated_frac": stats["tis_truncated_frac"],
                               "weight_min": float(seen.min()), "weight_max": float(seen.max())}
    return out


def turn_index(mask: torch.Tensor) -> torch.Tensor:
    """[B, R] 1-based index of the assistant turn each loss-carrying token belongs to (0 elsewhere)."""
    on = mask.bool()
    starts = on & ~torch.nn.functional.pad(on, (1, 0))[:, :-1]
    return torch.cumsum(starts.long(), -1) * on


def turn_gaps(batch: RolloutBatch, learner: torch.Tensor) -> dict[str, Any]:
    if not batch.multiturn:
        return {"available": False, "why": "a single-turn batch: no turn boundaries (record a grpo_tools run with "
                                           "--record-batches and pass --record to measure them)"}
    gap = (batch.logprobs - learner).abs()
    turn = turn_index(batch.response_mask)
    first = (turn > 0) & ~torch.nn.functional.pad(turn > 0, (1, 0))[:, :-1]
    per_turn = {str(k): float(gap[turn == k].mean()) for k in range(1, int(turn.max()) + 1)}
    later = first & (turn > 1)
    inside = (turn > 0) & ~first
    return {"available": True, "gap_abs_mean_by_turn": per_turn,
            "gap_abs_mean_turn_starts": float(gap[later].mean()) if later.any() else None,
            "gap_abs_mean_inside_turns": float(gap[inside].mean()) if inside.any() else None}


def mismatch_report(policy: torch.nn.Module, batch: RolloutBatch, cfg: LabConfig) -> dict[str, Any]:
    mask = batch.response_mask
    T = batch.temperature
    learner = batch_logprobs(policy, batch)
    at_one = batch_logprobs(policy, batch, temperature=1.0)
    t_alt = T if T != 1.0 else cfg.alt_temperature
    nucleus = torch.zeros_like(learner)
    for rows, z in chunked_logits(policy, batch):
        flat = process_logits(z.reshape(-1, z.shape[-1]), SamplingParams(temperature=T, top_p=cfg.alt_top_p))
        nucleus[rows] = logprobs_from_logits(flat.reshape(z.shape), batch.response_ids[rows])
    inside = mask * torch.isfinite(nucleus)
    views = {
        "engine": (learner, batch.logprobs, mask, f"the rollout engine's logprobs ({batch.meta.get('engine', '?')})"),
        "int8": (learner, batch_logprobs(quantize_int8(copy.deepcopy(policy)), batch), mask,
                 "the dynamic-int8 copy scoring the same tokens"),
        **{f"micro_batch_{m}": (learner, batch_logprobs(policy, batch, chunk=m), mask,
                                f"the learner in micro-batches of {m} rows")
           for m in cfg.micro_sizes},
        "temperature": (at_one, batch_logprobs(policy, batch, temperature=t_alt), mask,
                        f"sampled at temperature {t_alt:g}, scored at 1"),
        "top_p": (learner, torch.where(inside.bool(), nucleus, learner), inside,
                  f"sampled with top-p {cfg.alt_top_p:g}, scored on the full softmax"),
    }
    sources = {}
    for name, (old, rollout, m, what) in views.items():
        sources[name] = {"what": what, **source_stats(old, rollout, m, cfg.tis_cap)}
    sources["top_p"]["outside_nucleus_frac"] = float(1 - inside.sum() / mask.sum().clamp(min=1))
    return {"tis_cap": cfg.tis_cap, "temperature": T, "engine": batch.meta.get("engine", "?"), "sources": sources,
            "turns": turn_gaps(batch, learner)}
