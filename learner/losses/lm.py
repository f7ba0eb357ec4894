"""Causal-LM cross-entropy (pretrain, SFT, LoRA) with micro-batch-exact normalisation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minimind.data import IGNORE_INDEX

from .core import to_float

__all__ = ["lm_loss", "IGNORE_INDEX"]


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    global_tokens: int | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean cross-entropy.

    logits [B,T,V], labels [B,T] already aligned (``logits[:, t]`` predicts ``labels[:, t]``),
    ``-100`` ignored. The loss is Σ CE / global_tokens (default: this batch's label count), so
    micro-batches reduced with the full batch's label count sum to the full-batch loss.
    stats: ``loss`` (this call's value), ``tokens`` (label tokens in this call).
    """
    V = logits.shape[-1]
    ce_sum = F.cross_entropy(
        logits.reshape(-1, V).float(), labels.reshape(-1).long(),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )
    n_tokens = (labels != IGNORE_INDEX).sum()
    den = n_tokens.clamp(min=1).to(ce_sum.dtype) if global_tokens is None else max(float(global_tokens), 1.0)
    loss = ce_sum / den
    return loss, {"loss": to_float(loss), "tokens": to_float(n_tokens)}
