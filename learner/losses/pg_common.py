"""Pieces shared by the policy-loss family (Dr.GRPO, DAPO, GSPO, CISPO): the PPO-clip token
surrogate with optional per-token weights, the KL term toward the reference, and the statistics
every policy loss reports. Each loss module composes these; the formulas live in its docstring.

``weights`` (all losses): a detached [B,T] (or [B]) tensor multiplying each token's policy-gradient
loss before aggregation. The learner passes truncated importance weights here to correct for a
rollout engine that samples from a slightly different policy (see :mod:`learner.losses.tis`). The
KL term toward the reference is not weighted (as in verl's rollout correction).
"""
from __future__ import annotations

import torch

from .core import AggMode, KLKind, _enum, aggregate, kl_estimate, masked_mean, to_float
from .grpo import LOG_RATIO_CLAMP

__all__ = ["clip_surrogate", "apply_weights", "ratio_stats", "add_kl_term", "as_token_advantages",
           "check_policy_loss_fields"]


def as_token_advantages(advantages: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Advantages [B] or [B,T] -> detached [B,T]-broadcastable tensor in logp's dtype."""
    if advantages.dim() == logp.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    return advantages.detach().to(logp.dtype)


def apply_weights(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """losses [B,T] · weights ([B,T] or [B], detached); ``None`` leaves them unchanged."""
    if weights is None:
        return losses
    w = weights.detach().to(losses.dtype)
    if w.dim() == losses.dim() - 1:
        w = w.unsqueeze(-1)
    if w.shape[0] != losses.shape[0] or (w.shape[-1] not in (1, losses.shape[-1])):
        raise ValueError(f"weights shape {tuple(weights.shape)} does not match the loss's "
                         f"{tuple(losses.shape)} (token weights [B,T] or sequence weights [B])")
    return losses * w


def clip_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
    eps_low: float, eps_high: float, dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO-clip losses [B,T]: max(−A·r, −A·clip(r, 1−eps_low, 1+eps_high)), r = exp(logp − old)
    (log-ratio clamped to ±20); with ``dual_clip`` c > 1, min(that, −c·A) where A < 0.
    Returns (losses, parts) with parts = ratio, log_ratio, clipped (bool), dual (bool)."""
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    adv = as_token_advantages(advantages, logp)
    log_ratio = (logp - old_logp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    clipped = pg2 > pg1
    losses = torch.maximum(pg1, pg2)
    dual = torch.zeros_like(clipped)
    if dual_clip is not None:
        pg3 = -adv * dual_clip
        dual = (adv < 0) & (losses > pg3)
        losses = torch.where(adv < 0, torch.minimum(losses, pg3), losses)
    return losses, {"ratio": ratio, "log_ratio": log_ratio, "clipped": clipped, "dual": dual}


@torch.no_grad()
def ratio_stats(ratio: torch.Tensor, log_ratio: torch.Tensor, clipped: torch.Tensor,
                mask: torch.Tensor) -> dict[str, float]:
    """clip_frac, ratio_mean, ratio_max and approx_kl = mean((r − 1) − log r) over the masked tokens."""
    m = mask.to(ratio.dtype)
    has = bool(m.sum() > 0)
    return {
        "clip_frac": to_float(masked_mean(clipped.to(m.dtype), m)),
        "ratio_mean": to_float(masked_mean(ratio, m)),
        "ratio_max": to_float(ratio.masked_fill(m == 0, -torch.inf).max()) if has else 1.0,
        "approx_kl": to_float(masked_mean((ratio - 1.0) - log_ratio, m)),
    }


def add_kl_term(
    loss: torch.Tensor, stats: dict[str, float], owner: str, logp: torch.Tensor,
    ref_logp: torch.Tensor | None, mask: torch.Tensor, kl_coef: float, kl_kind: str,
    agg_mode: str | AggMode, agg: dict,
) -> torch.Tensor:
    """loss + kl_coef·aggregate(kl_estimate(logp, ref)) (when kl_coef > 0); logs ``kl`` when a
    reference is given and ``loss``. A positive kl_coef without a reference is an error."""
    if ref_logp is not None:
        kl_tok = kl_estimate(logp, ref_logp.detach(), kl_kind)
        if kl_coef > 0:
            loss = loss + kl_coef * aggregate(kl_tok, mask, agg_mode, **agg)
        stats["kl"] = to_float(masked_mean(kl_tok.detach(), mask))
    elif kl_coef > 0:
        raise ValueError(f"{owner}.kl_coef={kl_coef} > 0 puts a KL term in the loss but ref_logp is None: "
                         "keep a reference model or set its kl_coef to 0")
    stats["loss"] = to_float(loss)
    return loss


def check_policy_loss_fields(owner: str, kl_kind: str, agg_mode: str | None = None) -> None:
    _enum(KLKind, kl_kind, f"{owner} kl kind")
    if agg_mode is not None:
        _enum(AggMode, agg_mode, f"{owner} aggregation mode")
