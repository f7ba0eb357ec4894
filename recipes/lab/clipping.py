"""Which tokens each loss clips, and on which side. The clipped-ratio losses (GRPO, Dr.GRPO, DAPO, SPO, PPO)
clip a token when its ratio leaves the trust region in the direction its advantage pushes: below 1 - eps_low
with A < 0 (low), above 1 + eps_high with A > 0 (high): its gradient is then 0. Dual-clip bounds the loss
of A < 0 tokens whose ratio passed c (dual). GSPO does the same with one ratio per response: every token
of a clipped response counts. CISPO truncates the importance weight itself (above ratio_max: high, below
ratio_min: low) and keeps the token's gradient."""
from __future__ import annotations

from typing import Any, Callable

import torch

from learner.losses import CISPOLoss, GSPOLoss, masked_mean

Masks = dict[str, torch.Tensor]


def _sides(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float, dual: float | None) -> Masks:
    return {"low": (adv < 0) & (ratio < 1 - eps_low), "high": (adv > 0) & (ratio > 1 + eps_high),
            "dual": (adv < 0) & (ratio > dual) if dual is not None else torch.zeros_like(ratio, dtype=torch.bool)}


def _token_clip(loss: Any, logp, old, adv, mask) -> Masks:
    c = loss.clip
    return _sides(torch.exp(logp - old), adv, c.eps_low, c.eps_high, c.dual_clip)


def _sequence_clip(loss: GSPOLoss, logp, old, adv, mask) -> Masks:
    s = torch.exp(masked_mean(logp - old, mask, dim=-1)).unsqueeze(-1).expand_as(logp)
    c = loss.clip
    return _sides(s, adv, c.eps_low, c.eps_high, c.dual_clip)


def _weight_clip(loss: CISPOLoss, logp, old, adv, mask) -> Masks:
    ratio = torch.exp(logp - old)
    low = ratio < loss.ratio_min if loss.ratio_min is not None else torch.zeros_like(ratio, dtype=torch.bool)
    return {"low": low, "high": ratio > loss.ratio_max, "dual": torch.zeros_like(low)}


KINDS: tuple[tuple[type, Callable[..., Masks]], ...] = ((GSPOLoss, _sequence_clip), (CISPOLoss, _weight_clip))
"""Losses whose clipping is not the token ratio's, most specific first (GSPO is a clipped-ratio loss too)."""


@torch.no_grad()
def clip_counts(loss: Any, logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                mask: torch.Tensor) -> dict[str, float]:
    """Loss-carrying tokens clipped low, high and dual-clipped in this micro-batch (counts)."""
    adv = adv.unsqueeze(-1) if adv.dim() == logp.dim() - 1 else adv
    adv = adv.expand_as(logp)
    clip = next((fn for kind, fn in KINDS if isinstance(loss, kind)), _token_clip)
    on = mask.bool()
    return {side: float((m & on).sum()) for side, m in clip(loss, logp, old, adv, mask).items()}
