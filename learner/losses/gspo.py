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
With A_it = A_i it equals GSPO in value and gradient, so both variants are computed in this token
form; ``sequence`` only insists on one advantage per sequence.

Per-token weights w_it (the truncated importance weights of :mod:`learner.losses.tis`) multiply each
token's term of that sum, as verl's GSPO does: token t's gradient is −(1/B)(1/|y_i|)·w_it·A_i·s_i·
∇log π_θ(y_it). Weighting one sequence loss spread over its tokens instead would give every token
its sequence's MEAN weight (the same value, the wrong gradient).

Defaults (the paper's): ``clip`` ε_low = 3e-4, ε_high = 4e-4 (sequence ratios stay within ~1e-3 of 1,
so the clip ranges are two orders smaller than PPO's) with seq-mean-token-mean aggregation (one mean
over sequences of the sequences' token means), no KL term (``kl.coef`` 0), group-normalised advantages.
The clipped surrogate itself is :func:`learner.losses.grpo.policy_loss` applied to log s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from .config import ClipConfig, KLConfig
from .core import AllSum, _enum, masked_mean, to_float
from .grpo import LOG_RATIO_CLAMP, ClippedPolicyLoss, group_advantages, policy_loss

__all__ = ["GSPOLoss", "GSPOVariant", "sequence_log_ratio"]


class GSPOVariant(str, Enum):
    SEQUENCE = "sequence"
    TOKEN = "token"


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i = mean over the sequence's tokens of (logp − old) [B] (0 for an empty row), clamped to ±20."""
    return masked_mean(logp - old_logp.detach(), mask, dim=-1).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@dataclass
class GSPOLoss(ClippedPolicyLoss):
    """GSPO objective (arXiv 2507.18071): sequence-level ratio exp(mean_t log ρ_t), sequence-level
    clipping, one mean over sequences; ``variant="token"`` is GSPO-token."""

    clip: ClipConfig = field(default_factory=lambda: ClipConfig(eps_low=3e-4, eps_high=4e-4,
                                                                agg_mode="seq-mean-token-mean"))
    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.0))
    variant: str = "sequence"
    """sequence (GSPO) or token (GSPO-token: per-token advantages allowed)."""
    adv_eps: float = 1e-6
    """Added to the group std before dividing."""

    def __post_init__(self) -> None:
        _enum(GSPOVariant, self.variant, "GSPOLoss variant")

    def compute_advantages(self, rewards: torch.Tensor, group_uid: torch.Tensor,
                           old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None, all_sum: AllSum | None = None,
                           lengths: torch.Tensor | None = None) -> torch.Tensor:
        rewards = self.penalized_rewards(rewards, old_logp, ref_logp, mask)
        return group_advantages(rewards, group_uid, "group", self.adv_eps)

    def __call__(self, logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                 advantages: torch.Tensor, mask: torch.Tensor, global_tokens: int | float | None = None,
                 global_seqs: int | None = None, max_len: int | None = None,
                 weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        agg = dict(global_tokens=global_tokens, global_seqs=global_seqs, max_len=max_len)
        m = mask.to(logp.dtype)
        variant = _enum(GSPOVariant, self.variant, "GSPOLoss variant")
        if variant is GSPOVariant.SEQUENCE and advantages.dim() != 1:
            raise ValueError(f"GSPOLoss variant=sequence takes sequence advantages [B], got "
                             f"{tuple(advantages.shape)}; use variant='token' (--gspo.variant token) for "
                             f"per-token advantages")
        # value log s_i on every token, gradient ∇log π_θ(y_it) of that token alone: the aggregation's
        # 1/|y_i| gives GSPO's gradient, and a per-token weight scales its own token's gradient only.
        # policy_loss clamps log s_it to ±LOG_RATIO_CLAMP: a sequence beyond it has no gradient
        log_s = masked_mean(logp.detach() - old_logp.detach(), m, dim=-1)    # [B]
        log_s_t = log_s.unsqueeze(-1) + logp - logp.detach()
        c = self.clip
        # the PPO-clip surrogate of s against an old ratio of 1 (log 0): exactly GSPO's clipped objective
        pg, stats = policy_loss(log_s_t, torch.zeros_like(logp), advantages, m, c.eps_low, c.eps_high, c.dual_clip,
                                c.agg_mode, **agg, weights=weights)
        with torch.no_grad():
            adv = advantages.detach().to(logp.dtype)
            adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv
            s = torch.exp(log_s_t.detach())
            clipped = adv * (s - s.clamp(1.0 - c.eps_low, 1.0 + c.eps_high)) > 0   # where the clip is active
            has = m.sum(-1) > 0
            seq_clipped = (clipped.to(m.dtype) * m).sum(-1) > 0
            stats["seq_clip_frac"] = to_float(seq_clipped[has].float().mean()) if bool(has.any()) else 0.0
        return self.with_kl(pg, stats, logp, ref_logp, m, c.agg_mode, agg), stats
