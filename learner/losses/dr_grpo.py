"""Dr.GRPO: "Understanding R1-Zero-Like Training: A Critical Perspective" (Liu et al. 2025,
arXiv 2503.20783).

GRPO divides each group's advantages by the group's reward std (questions that are too easy or too
hard get up-weighted) and each sequence's token sum by its own length (short correct answers get a
larger per-token push, long wrong ones a smaller penalty). Dr.GRPO removes both:

    A_i   = r_i − mean_{j in group(i)} r_j                       (no std scaling)
    L     = (1 / (B · L_max)) Σ_i Σ_t m_it · max(−A_i·ρ_it, −A_i·clip(ρ_it, 1−ε, 1+ε))
    ρ_it  = π_θ(y_it) / π_old(y_it)

where L_max is a CONSTANT (the generation budget, ``max_response_len``), not the batch's length,
so every token of every sequence gets the same weight 1/(B·L_max). In a multi-turn episode the budget
is the episode's (its turns AND the tool observations between them, ``--env.max-total-tokens``), as
verl's constant is the padded response length of a whole trajectory: a response can be that long.
Gradient (inside the clip range): ∇L = −(1/(B·L_max)) Σ_i A_i Σ_t ρ_it ∇log π_θ(y_it).

Defaults (the paper's): ``clip`` ε = 0.2 both sides with ``agg_mode`` seq-mean-token-sum-norm (the
constant normaliser above), no KL term (``kl.coef`` = 0; a positive one adds it). The recipe sets
``max_response_len`` to the run's response budget when it is left at none:
``--rollout.sampling.max-new-tokens``, or ``--env.max-total-tokens`` for multi-turn episodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import ClipConfig, KLConfig
from .core import AllSum
from .grpo import ClippedPolicyLoss, group_advantages

__all__ = ["DrGRPOLoss"]


@dataclass
class DrGRPOLoss(ClippedPolicyLoss):
    """Dr.GRPO objective (arXiv 2503.20783): mean-centred group advantages without std scaling,
    token losses summed per sequence and divided by the constant B·max_response_len."""

    clip: ClipConfig = field(default_factory=lambda: ClipConfig(agg_mode="seq-mean-token-sum-norm"))
    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.0))
    max_response_len: int | None = None
    """The constant L_max sequence sums are divided by (none: the run's response budget,
    --rollout.sampling.max-new-tokens; in multi-turn episodes --env.max-total-tokens)."""

    def __post_init__(self) -> None:
        if self.max_response_len is not None and self.max_response_len < 1:
            raise ValueError(f"DrGRPOLoss.max_response_len={self.max_response_len}: must be >= 1 (or none)")

    def compute_advantages(self, rewards: torch.Tensor, group_uid: torch.Tensor,
                           old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None, all_sum: AllSum | None = None,
                           lengths: torch.Tensor | None = None) -> torch.Tensor:
        """A_i = r_i − group mean [B] (no std scaling; KL-penalised rewards when the KL is in the reward)."""
        return group_advantages(self.penalized_rewards(rewards, old_logp, ref_logp, mask), group_uid, scale="none")

    def __call__(self, logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                 advantages: torch.Tensor, mask: torch.Tensor, global_tokens: int | float | None = None,
                 global_seqs: int | None = None, max_len: int | None = None,
                 weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        L = self.max_response_len if self.max_response_len is not None else max_len
        if L is not None and mask.shape[-1] > L:
            raise ValueError(f"DrGRPOLoss: responses of {mask.shape[-1]} tokens exceed max_response_len={L}: the "
                             f"constant must be the longest response the rollout returns, the episode budget "
                             f"--env.max-total-tokens in multi-turn runs (observations included), else "
                             f"--rollout.sampling.max-new-tokens; leave --dr-grpo.max-response-len at none to use it")
        return super().__call__(logp, old_logp, ref_logp, advantages, mask, global_tokens, global_seqs, L, weights)
