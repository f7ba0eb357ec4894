"""Dr.GRPO: "Understanding R1-Zero-Like Training: A Critical Perspective" (Liu et al. 2025,
arXiv 2503.20783).

GRPO divides each group's advantages by the group's reward std (questions that are too easy or too
hard get up-weighted) and each sequence's token sum by its own length (short correct answers get a
larger per-token push, long wrong ones a smaller penalty). Dr.GRPO removes both:

    A_i   = r_i − mean_{j in group(i)} r_j                       (no std scaling)
    L     = (1 / (B · L_max)) Σ_i Σ_t m_it · max(−A_i·ρ_it, −A_i·clip(ρ_it, 1−ε, 1+ε))
    ρ_it  = π_θ(y_it) / π_old(y_it)

where L_max is a CONSTANT (the generation budget, ``max_response_len``), not the batch's length,
so every token of every sequence gets the same weight 1/(B·L_max).
Gradient (inside the clip range): ∇L = −(1/(B·L_max)) Σ_i A_i Σ_t ρ_it ∇log π_θ(y_it).

Defaults (the paper's): ε = 0.2 both sides, no KL term (β = 0; ``kl_coef`` adds one).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .core import aggregate, to_float
from .grpo import group_advantages
from .pg_common import add_kl_term, apply_weights, check_policy_loss_fields, clip_surrogate, ratio_stats

__all__ = ["DrGRPOLoss"]


@dataclass
class DrGRPOLoss:
    """Dr.GRPO objective (arXiv 2503.20783): mean-centred group advantages without std scaling,
    token losses summed per sequence and divided by the constant B·max_response_len."""

    eps_low: float = 0.2
    """Lower clip range of the PPO ratio (paper: 0.2)."""
    eps_high: float = 0.2
    """Upper clip range of the PPO ratio (paper: 0.2)."""
    max_response_len: int | None = None
    """The constant L_max sequence sums are divided by: the rollout's max_new_tokens. None: the
    padded response width the learner passes as ``max_len`` (constant only if the batch is padded
    to the budget)."""
    kl_coef: float = 0.0
    """β of the k-estimator KL toward the reference, in the loss (paper: 0, no KL)."""
    kl_kind: str = "k3"
    """KL estimator: k1, k2 or k3."""

    def __post_init__(self) -> None:
        check_policy_loss_fields("DrGRPOLoss", self.kl_kind)
        if self.max_response_len is not None and self.max_response_len < 1:
            raise ValueError(f"DrGRPOLoss.max_response_len={self.max_response_len}: must be >= 1 (or None)")

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_coef > 0

    @property
    def kl_in_advantages(self) -> bool:
        return False

    def compute_advantages(self, rewards: torch.Tensor, group_uid: torch.Tensor,
                           old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
        """A_i = r_i − group mean [B] (no std scaling)."""
        return group_advantages(rewards, group_uid, scale="none")

    def __call__(self, logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                 advantages: torch.Tensor, mask: torch.Tensor, global_tokens: int | float | None = None,
                 global_seqs: int | None = None, max_len: int | None = None,
                 weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        L = self.max_response_len if self.max_response_len is not None else max_len
        if L is not None and mask.shape[-1] > L:
            raise ValueError(f"DrGRPOLoss: responses of {mask.shape[-1]} tokens exceed max_response_len={L}; "
                             "set max_response_len to the rollout's max_new_tokens")
        agg = dict(global_tokens=global_tokens, global_seqs=global_seqs, max_len=L)
        losses, parts = clip_surrogate(logp, old_logp, advantages, self.eps_low, self.eps_high)
        pg = aggregate(apply_weights(losses, weights), mask, "seq-mean-token-sum-norm", **agg)
        stats = {"pg_loss": to_float(pg), **ratio_stats(parts["ratio"], parts["log_ratio"], parts["clipped"], mask)}
        loss = add_kl_term(pg, stats, "DrGRPOLoss", logp, ref_logp, mask, self.kl_coef, self.kl_kind,
                           "seq-mean-token-sum-norm", agg)
        return loss, stats
