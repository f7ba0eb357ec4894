"""Tensor-level building blocks shared by every loss (torchtune style: no model inside).

Shapes: B = sequences, T = tokens per sequence, V = vocabulary. Masks are float or bool
tensors with 1 on the tokens that count (response tokens for RL, label tokens for LM).

Micro-batching contract: every reduction that produces a loss takes optional *global*
counts (``global_tokens``, ``global_seqs``, ``max_len``). When a batch is split into
micro-batches and each one is reduced with the counts of the FULL batch, the micro-batch
losses SUM exactly to the full-batch loss, so gradient accumulation needs no rescaling.
"""
from __future__ import annotations

from enum import Enum
from typing import Callable

import torch

__all__ = [
    "AllSum",
    "global_mean_var",
    "AggMode",
    "KLKind",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "logprobs_from_logits",
    "entropy_from_logits",
    "kl_estimate",
    "aggregate",
    "global_counts",
    "to_float",
    "apply_weights",
]

#: δ = ref − logp is clamped to this range before exponentiation in the k3 estimator.
K3_DELTA_CLAMP = 20.0


def to_float(x: torch.Tensor | float | int) -> float:
    """Detached python float for stats dicts."""
    if isinstance(x, torch.Tensor):
        return float(x.detach().float().item())
    return float(x)


# --------------------------------------------------------------------------- masked ops

def apply_weights(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-token losses [B,T] times detached weights ([B,T] per token or [B] per sequence); None
    leaves them unchanged (how the truncated importance weights enter every policy loss)."""
    if weights is None:
        return losses
    w = weights.detach().to(losses.dtype)
    if w.dim() == losses.dim() - 1:
        w = w.unsqueeze(-1)
    if w.shape[0] != losses.shape[0] or (w.shape[-1] not in (1, losses.shape[-1])):
        raise ValueError(f"weights shape {tuple(weights.shape)} does not match the loss's "
                         f"{tuple(losses.shape)} (token weights [B,T] or sequence weights [B])")
    return losses * w


def _as_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(dtype=like.dtype if like.is_floating_point() else torch.float32)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·mask over ``dim`` (all elements when ``dim`` is None)."""
    m = _as_mask(mask, x)
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·mask / Σ mask (the denominator is clamped to ≥1 so an empty mask gives 0, not NaN)."""
    m = _as_mask(mask, x)
    num = (x * m).sum() if dim is None else (x * m).sum(dim=dim)
    den = m.sum() if dim is None else m.sum(dim=dim)
    return num / den.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked elements of ``x`` (all dims). ``unbiased`` applies Bessel's
    correction n/(n−1) (as ``torch.var``'s default); with n ≤ 1 the correction is skipped."""
    m = _as_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum()
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1.0), var)
    return var


AllSum = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over the data-parallel learner ranks (learner.distributed.Comm.all_sum): batch-wide
statistics of a batch split over ranks. None: this process holds the whole batch."""


def global_mean_var(x: torch.Tensor, mask: torch.Tensor, all_sum: AllSum) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of the masked elements of ``x`` over every rank's rows (two passes,
    as masked_var)."""
    m = _as_mask(mask, x)
    n, total = all_sum(torch.stack([m.sum(), (x * m).sum()]).double())
    mean = (total / n.clamp(min=1.0)).to(x.dtype)
    ss = all_sum((((x - mean) ** 2) * m).sum().double().reshape(1))[0]
    var = ss / n.clamp(min=1.0)
    var = torch.where(n > 1, var * n / (n - 1).clamp(min=1.0), var)
    return mean, var.to(x.dtype)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
    all_sum: AllSum | None = None,
) -> torch.Tensor:
    """(x − mean)/sqrt(var + eps) over the masked elements (unbiased var); if ``shift_mean`` is
    False the mean is added back (scale only). Masked-out positions are returned as 0. With
    ``all_sum`` the statistics are those of every learner rank's rows."""
    m = _as_mask(mask, x)
    if all_sum is None:
        mean = masked_mean(x, m)
        var = masked_var(x, m, unbiased=True)
    else:
        mean, var = global_mean_var(x, m, all_sum)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


# --------------------------------------------------------------------------- logits -> stats

def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens]: [B,T,V], [B,T] -> [B,T] (float32 for low-precision input).

    fp32/fp64 use ``gather − logsumexp`` (no [B,T,V] log-softmax tensor is kept for backward
    beyond what logsumexp needs). bf16/fp16 go row by row through an fp32 log_softmax so the
    result is accurate without materialising the whole batch in fp32 at once.
    """
    idx = tokens.long().unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, idx).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    rows = []
    for row_logits, row_idx in zip(logits, idx):
        lp = torch.log_softmax(row_logits.float(), dim=-1)
        rows.append(torch.gather(lp, -1, row_idx).squeeze(-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: [B,T,V] -> [B,T] (computed in ≥fp32).
    H = logsumexp(z) − Σ softmax(z)·z."""
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


# --------------------------------------------------------------------------- KL estimators

class KLKind(str, Enum):
    K1 = "k1"
    K2 = "k2"
    K3 = "k3"


def _k1(delta: torch.Tensor) -> torch.Tensor:
    return -delta


def _k2(delta: torch.Tensor) -> torch.Tensor:
    return 0.5 * delta * delta


def _k3(delta: torch.Tensor) -> torch.Tensor:
    d = delta.clamp(-K3_DELTA_CLAMP, K3_DELTA_CLAMP)
    return torch.exp(d) - d - 1.0


_KL_FNS: dict[KLKind, Callable[[torch.Tensor], torch.Tensor]] = {
    KLKind.K1: _k1, KLKind.K2: _k2, KLKind.K3: _k3,
}


def _enum(enum_cls: type[Enum], value: str | Enum, what: str) -> Enum:
    try:
        return enum_cls(value)
    except ValueError:
        valid = ", ".join(repr(e.value) for e in enum_cls)
        raise ValueError(f"unknown {what} {value!r}; valid: {valid}") from None


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str | KLKind = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π, δ = ref_logp − logp:
    k1 = −δ (unbiased, can be negative), k2 = ½δ², k3 = e^δ − δ − 1 (unbiased, ≥ 0; δ is
    clamped to ±20 to avoid overflow)."""
    fn = _KL_FNS[_enum(KLKind, kind, "kl kind")]
    return fn(ref_logp - logp)


# --------------------------------------------------------------------------- aggregation

class AggMode(str, Enum):
    TOKEN_MEAN = "token-mean"
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
    SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"


def _agg_token_mean(v, m, global_tokens, global_seqs, max_len):
    if global_tokens is None:
        return (v * m).sum() / m.sum().clamp(min=1.0)
    return (v * m).sum() / max(float(global_tokens), 1.0)


def _agg_seq_mean_token_mean(v, m, global_tokens, global_seqs, max_len):
    per_seq = (v * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    n_seqs = v.shape[0] if global_seqs is None else global_seqs
    return per_seq.sum() / max(float(n_seqs), 1.0)


def _agg_seq_mean_token_sum_norm(v, m, global_tokens, global_seqs, max_len):
    n_seqs = v.shape[0] if global_seqs is None else global_seqs
    length = v.shape[-1] if max_len is None else max_len
    return (v * m).sum() / max(float(n_seqs) * float(length), 1.0)


_AGG_FNS = {
    AggMode.TOKEN_MEAN: _agg_token_mean,
    AggMode.SEQ_MEAN_TOKEN_MEAN: _agg_seq_mean_token_mean,
    AggMode.SEQ_MEAN_TOKEN_SUM_NORM: _agg_seq_mean_token_sum_norm,
}


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str | AggMode = "token-mean",
    global_tokens: int | float | torch.Tensor | None = None,
    global_seqs: int | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce per-token ``values`` [B,T] to a scalar loss.

    - ``token-mean``: Σ(values·mask) / global_tokens (default: mask.sum() of this batch).
    - ``seq-mean-token-mean``: Σ_seq mean_over_its_tokens / global_seqs (default: B; rows with
      no tokens contribute 0 but are counted).
    - ``seq-mean-token-sum-norm`` (Dr.GRPO): Σ(values·mask) / (global_seqs · max_len)
      (defaults: B and T).

    Pass the FULL batch's counts when aggregating a micro-batch; the micro-batch results then
    sum to the full-batch value.
    """
    fn = _AGG_FNS[_enum(AggMode, mode, "aggregation mode")]
    m = _as_mask(mask, values)
    return fn(values, m, global_tokens, global_seqs, max_len)


def global_counts(mask: torch.Tensor) -> dict[str, int]:
    """The keyword arguments of :func:`aggregate` for a full batch with ``mask`` [B,T]:
    ``{"global_tokens": mask.sum(), "global_seqs": B, "max_len": T}``."""
    return {
        "global_tokens": int(mask.sum().item()),
        "global_seqs": int(mask.shape[0]),
        "max_len": int(mask.shape[-1]),
    }
