"""Truncated importance sampling (TIS): correcting for a rollout engine that samples from a slightly
different policy than the learner trains (bf16 vLLM, an int8 copy, a stale engine).

The learner's loss is an expectation under its own old policy π_old (its fp32 recomputation of the
rollout's logprobs), but the tokens were sampled from the engine's π_roll. Each token's loss is
weighted by the truncated ratio (Yao et al. 2025, "Your efficient RL framework secretly brings you
off-policy RL training"; verl's rollout correction):

    token level:     w_it = min(exp(old_it − rollout_it), C)
    sequence level:  w_i  = min(exp(Σ_t (old_it − rollout_it)), C)          (one weight per sequence)

Unbiased while the ratio stays ≤ C; the cap bounds the variance. The token form is the usual
choice (lower variance, exact for single-token decisions); the sequence form is exact for whole
sequences as long as nothing is truncated.

Use: ``w, stats = tis_weights(old, rollout, mask, cap=2.0)`` then ``loss_fn(..., weights=w)`` (every
policy loss takes ``weights``); ``stats`` are the mismatch statistics to log each step. The RL stages
do this when ``--update.tis-cap C`` is set (``--update.tis-level token|sequence``; see
``learner.stages.rl_common``).
"""
from __future__ import annotations

from enum import Enum

import torch

from contract.stats import maximum

from .core import _enum, masked_mean, to_float
from .grpo import LOG_RATIO_CLAMP

__all__ = ["TISLevel", "tis_weights", "mismatch_stats"]


class TISLevel(str, Enum):
    TOKEN = "token"
    SEQUENCE = "sequence"


@torch.no_grad()
def mismatch_stats(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """mean and max |old − rollout| over the masked tokens, and the k3 estimate of
    KL(π_roll ‖ π_old) from the rollout's samples (mean of e^δ − δ − 1, δ = old − rollout)."""
    if old_logp.shape != rollout_logp.shape or old_logp.shape != mask.shape:
        raise ValueError(f"mismatch_stats: old {tuple(old_logp.shape)}, rollout {tuple(rollout_logp.shape)} and "
                         f"mask {tuple(mask.shape)} must have the same [B,T] shape")
    m = mask.to(old_logp.dtype)
    d = (old_logp - rollout_logp.to(old_logp.dtype)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    has = bool(m.sum() > 0)
    return {
        "mismatch_abs_mean": to_float(masked_mean(d.abs(), m)),
        "mismatch_abs_max": maximum((d.abs() * m).max()) if has else 0.0,
        "mismatch_kl": to_float(masked_mean(torch.exp(d) - d - 1.0, m)),
    }


@torch.no_grad()
def tis_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, cap: float,
                level: str | TISLevel = "token") -> tuple[torch.Tensor, dict[str, float]]:
    """Detached truncated importance weights: [B,T] (token level, 0 off the mask) or [B] (sequence
    level), and stats: the :func:`mismatch_stats` plus ``tis_truncated_frac`` (share of tokens, or of
    sequences, whose weight hit the cap) and ``tis_weight_mean``."""
    lvl = _enum(TISLevel, level, "TIS level")
    stats = mismatch_stats(old_logp, rollout_logp, mask)
    m = mask.to(old_logp.dtype)
    d = (old_logp - rollout_logp.to(old_logp.dtype)) * m
    if lvl is TISLevel.TOKEN:
        ratio = torch.exp(d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        w = ratio.clamp(max=cap) * m
        stats["tis_truncated_frac"] = to_float(masked_mean((ratio > cap).to(m.dtype), m))
        stats["tis_weight_mean"] = to_float(masked_mean(w, m))
    else:
        ratio = torch.exp(d.sum(-1).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        w = ratio.clamp(max=cap)
        rows = m.sum(-1) > 0
        n = max(int(rows.sum()), 1)
        stats["tis_truncated_frac"] = float(((ratio > cap) & rows).sum()) / n
        stats["tis_weight_mean"] = float((w * rows).sum()) / n
    return w, stats
