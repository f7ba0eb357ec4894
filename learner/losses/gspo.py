"""GSPO: "Group Sequence Policy Optimization" (Zheng et al. 2025, Qwen, arXiv 2507.18071).

GRPO's per-token ratios are single-sample importance weights of a sequence-level reward: noisy,
and the noise accumulates with length. GSPO uses one length-normalised ratio per sequence and clips
whole sequences:

    s_i = (π_θ(y_i) / π_old(y_i))^(1/|y_i|) = exp((1/|y_i|) Σ_t log ρ_it)
    L   = (1/B) Σ_i max(−A_i·s_i, −A_i·clip(s_i, 1−ε_low, 1+ε_high))
    A_i = (r_i − mean_g r) / (std_g r + 1e-6)                     (GRPO's group normalisation)

Gradient inside the clip range: ∇L = −(1/B) Σ_i A_i s_i (1/|y_i|) Σ_t ∇log π_θ(y_it); a clipped
sequence contributes nothing.

GSPO-token (``variant="token"``) allows per-token advantages A_it:
    s_it = sg[s_i] · π_θ(y_it) / sg[π_θ(y_it)]        (value s_i, gradient s_i·∇log π_θ(y_it))
    L    = (1/B) Σ_i (1/|y_i|) Σ_t max(−A_it·s_it, −A_it·clip(s_it, 1−ε_low, 1+ε_high))
With A_it = A_i it equals GSPO in value and gradient.

Defaults (the paper's): ε_low = 3e-4, ε_high = 4e-4 (sequence ratios stay within ~1e-3 of 1, so the
clip ranges are two orders smaller than PPO's), no KL term, group-normalised advantages, one mean
over sequences (the sequences' token means).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from .core import _enum, aggregate, masked_mean, to_float
from .grpo import LOG_RATIO_CLAMP, group_advantages
from .pg_common import add_kl_term, apply_weights, as_token_advantages, check_policy_loss_fields, ratio_stats

__all__ = ["GSPOLoss", "GSPOVariant", "sequence_log_ratio"]


class GSPOVariant(str, Enum):
    SEQUENCE = "sequence"
    TOKEN = "token"


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i = mean over the sequence's tokens of (logp − old) [B] (0 for an empty row), clamped to ±20."""
    return masked_mean(logp - old_logp.detach(), mask, dim=-1).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@dataclass
class GSPOLoss:
    """GSPO objective (arXiv 2507.18071): sequence-level ratio exp(mean_t log ρ_t), sequence-level
    clipping, one mean over sequences; ``variant="token"`` is GSPO-token."""

    eps_low: float = 3e-4
    """Lower clip range of the sequence ratio (paper: 3e-4)."""
    eps_high: float = 4e-4
    """Upper clip range of the sequence ratio (paper: 4e-4)."""
    variant: str = "sequence"
    """sequence (GSPO) or token (GSPO-token: per-token advantages allowed)."""
    kl_coef: float = 0.0
    """β of a KL term toward the reference in the loss (paper: none)."""
    kl_kind: str = "k3"
    """KL estimator: k1, k2 or k3."""
    adv_eps: float = 1e-6
    """Added to the group std before dividing."""

    def __post_init__(self) -> None:
        check_policy_loss_fields("GSPOLoss", self.kl_kind)
        _enum(GSPOVariant, self.variant, "GSPOLoss variant")

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_coef > 0

    @property
    def kl_in_advantages(self) -> bool:
        return False

    def compute_advantages(self, rewards: torch.Tensor, group_uid: torch.Tensor,
                           old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
        return group_advantages(rewards, group_uid, "group", self.adv_eps)

    def __call__(self, logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                 advantages: torch.Tensor, mask: torch.Tensor, global_tokens: int | float | None = None,
                 global_seqs: int | None = None, max_len: int | None = None,
                 weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        agg = dict(global_tokens=global_tokens, global_seqs=global_seqs, max_len=max_len)
        m = mask.to(logp.dtype)
        log_s = sequence_log_ratio(logp, old_logp, m)                      # [B]
        token = _enum(GSPOVariant, self.variant, "GSPOLoss variant") is GSPOVariant.TOKEN
        if token:
            adv = as_token_advantages(advantages, logp).expand_as(logp)
            log_s_t = log_s.detach().unsqueeze(-1) + logp - logp.detach()   # value log s_i, grad ∇log π
        else:
            if advantages.dim() != 1:
                raise ValueError(f"GSPOLoss variant=sequence takes sequence advantages [B], got "
                                 f"{tuple(advantages.shape)}; use variant='token' for per-token advantages")
            adv = advantages.detach().to(logp.dtype).unsqueeze(-1)
            # one loss per sequence, spread over its tokens so that the seq-mean-token-mean of the
            # token values is Σ_i L_i / B (and weights/micro-batching behave as for the other losses)
            log_s_t = log_s.unsqueeze(-1).expand_as(logp)
        s = torch.exp(log_s_t)
        pg1 = -adv * s
        pg2 = -adv * s.clamp(1.0 - self.eps_low, 1.0 + self.eps_high)
        clipped = pg2 > pg1
        losses = torch.maximum(pg1, pg2)
        pg = aggregate(apply_weights(losses, weights), m, "seq-mean-token-mean", **agg)
        with torch.no_grad():
            has = m.sum(-1) > 0
            seq_clipped = (clipped.to(m.dtype) * m).sum(-1) > 0
            stats = {"pg_loss": to_float(pg),
                     **ratio_stats(torch.exp(log_s_t.detach()), log_s_t.detach(), clipped, m),
                     "seq_clip_frac": to_float(seq_clipped[has].float().mean()) if bool(has.any()) else 0.0}
        loss = add_kl_term(pg, stats, "GSPOLoss", logp, ref_logp, m, self.kl_coef, self.kl_kind,
                           "seq-mean-token-mean", agg)
        return loss, stats
