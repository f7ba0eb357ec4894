"""Reward-model (Bradley–Terry) loss on scalar scores of chosen / rejected responses."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import to_float

__all__ = ["bradley_terry_loss"]


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """loss = mean −log σ(r_c − r_r − m) (m = optional margin, scalar or [B], as in Llama 2;
    None means 0). stats: ``loss``, ``accuracy`` = fraction with r_c > r_r, ``margin`` = mean
    r_c − r_r (the score gap, not the margin argument)."""
    diff = chosen_scores - rejected_scores
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits).mean()
    d = diff.detach()
    return loss, {
        "loss": to_float(loss),
        "accuracy": to_float((d > 0).float().mean()),
        "margin": to_float(d.mean()),
    }
