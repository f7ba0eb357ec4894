"""Direct Preference Optimization (Rafailov et al. 2023) on summed response logprobs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import masked_sum, to_float

__all__ = ["dpo_loss", "sequence_logprob"]


def sequence_logprob(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t token_logp·mask: [B,T] -> [B] (the summed response logprob DPO uses)."""
    return masked_sum(token_logp, mask, dim=-1)


def dpo_loss(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """h = β[(πc − πr) − (refc − refr)];
    loss = mean( −(1−ε)·log σ(h) − ε·log σ(−h) )  (conservative DPO; ε=0 is plain DPO).

    All inputs are [B] summed response logprobs. stats: ``loss``, ``chosen_reward`` =
    mean β(πc−refc), ``rejected_reward`` = mean β(πr−refr), ``reward_margin`` = their mean
    difference, ``reward_accuracy`` = fraction of pairs with chosen reward > rejected reward.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_r = beta * (pi_chosen - ref_chosen)
    rejected_r = beta * (pi_rejected - ref_rejected)
    h = chosen_r - rejected_r
    losses = -(1.0 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    loss = losses.mean()
    cr, rr = chosen_r.detach(), rejected_r.detach()
    stats = {
        "loss": to_float(loss),
        "chosen_reward": to_float(cr.mean()),
        "rejected_reward": to_float(rr.mean()),
        "reward_margin": to_float((cr - rr).mean()),
        "reward_accuracy": to_float((cr > rr).float().mean()),
    }
    return loss, stats
