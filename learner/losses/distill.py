"""Knowledge distillation (Hinton et al. 2015): α·CE(labels) + (1−α)·T²·KL(teacher_T ‖ student_T)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import to_float
from .lm import IGNORE_INDEX

__all__ = ["distill_loss"]


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
    global_tokens: int | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """student/teacher logits [B,T,V] (same vocabulary), labels [B,T] aligned as in
    :func:`lm_loss` (-100 ignored). Both terms are summed over label tokens and divided by
    ``global_tokens`` (default: this batch's label count), so micro-batches sum exactly.

    KL per token = Σ_v p_T(v)·(log p_T(v) − log q_T(v)), p_T = softmax(teacher/T),
    q_T = softmax(student/T); the teacher is detached. stats: ``loss``, ``ce``, ``kl``
    (un-scaled token-mean KL), ``tokens``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    V = student_logits.shape[-1]
    valid = labels != IGNORE_INDEX                                    # [B,T]
    n_tokens = valid.sum()
    den = n_tokens.clamp(min=1).float() if global_tokens is None else max(float(global_tokens), 1.0)

    s = student_logits.float()
    ce_sum = F.cross_entropy(s.reshape(-1, V), labels.reshape(-1).long(),
                             ignore_index=IGNORE_INDEX, reduction="sum")
    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl_tok = (log_p.exp() * (log_p - log_q)).sum(-1)                  # [B,T]
    kl_sum = (kl_tok * valid.to(kl_tok.dtype)).sum()

    ce = ce_sum / den
    kl = kl_sum / den
    loss = alpha * ce + (1.0 - alpha) * temperature ** 2 * kl
    return loss, {"loss": to_float(loss), "ce": to_float(ce), "kl": to_float(kl),
                  "tokens": to_float(n_tokens)}
