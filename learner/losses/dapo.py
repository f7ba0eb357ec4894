"""DAPO: "An Open-Source LLM Reinforcement Learning System at Scale" (Yu et al. 2025, arXiv 2503.14476).

Four changes to GRPO, three of them here and one in the GRPO stage:

- **Clip-higher**: ε_low = 0.2, ε_high = 0.28 (low-probability tokens can grow; less entropy collapse).
- **Token-level loss**: one mean over every token of the batch (not per sequence first), so long
  sequences weigh in proportion to their tokens:
      L = (1 / Σ_i |y_i|) Σ_i Σ_t max(−A_i·ρ_it, −A_i·clip(ρ_it, 1−ε_low, 1+ε_high))
  with A_i = (R_i − mean_g R) / (std_g R + 1e-6) (GRPO's group normalisation) and R_i the shaped
  reward below. Gradient inside the clip range: ∇L = −(1/Σ|y|) Σ_i A_i Σ_t ρ_it ∇log π_θ(y_it).
- **Overlong reward shaping** (soft punishment, :func:`overlong_reward`), added to the task reward
  before the group normalisation, with L the response's length, L_max the length budget and L_cache
  the buffer:
      r_len(L) = 0                               if L ≤ L_max − L_cache
               = ((L_max − L_cache) − L) / L_cache  if L_max − L_cache < L ≤ L_max
               = −1                              if L > L_max
  A response cut at the budget (L = L_max) gets −1. L counts every token of the response: in a
  multi-turn episode the model's turns AND the tool observations between them (verl likewise counts
  the response's attention mask), against the episode's budget — not only the loss mask's tokens
  against one turn's cap, which would punish every episode that used a tool.
- **Dynamic sampling**: groups whose rewards are all equal (zero advantage) are dropped and the
  batch refilled: that is the GRPO stage's zero-variance filter, which the recipe turns on with
  ``--loss dapo`` (``--filter-zero-variance false`` turns it off).

Defaults (the paper's): ``clip`` ε_low 0.2, ε_high 0.28 with token-mean aggregation, no KL term
(``kl.coef`` 0), dynamic sampling on, overlong buffer L_cache = L_max / 5 (the paper: L_max = 20,480
with a 4,096-token buffer; its expected maximum 16,384). L_max has no portable default: the recipe
sets it to the run's response budget, ``--rollout.sampling.max-new-tokens`` (``--env.max-total-tokens``
for multi-turn episodes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import ClipConfig, KLConfig
from .core import AllSum
from .grpo import ClippedPolicyLoss, group_advantages

__all__ = ["DAPOLoss", "overlong_reward"]


def overlong_reward(lengths: torch.Tensor, max_len: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment r_len(L) (see the module docstring) for response lengths [B]."""
    if not 0 < buffer <= max_len:
        raise ValueError(f"overlong buffer={buffer} must be in (0, max_len={max_len}]")
    L = lengths.float()
    start = float(max_len - buffer)
    ramp = (start - L) / float(buffer)
    out = torch.where(L <= start, torch.zeros_like(L), ramp)
    return torch.where(L > max_len, torch.full_like(L, -1.0), out)


@dataclass
class DAPOLoss(ClippedPolicyLoss):
    """DAPO objective (arXiv 2503.14476): clip-higher PPO surrogate, token-mean over the batch, group
    advantages of overlong-shaped rewards (dynamic sampling is the GRPO stage's zero-variance filter)."""

    clip: ClipConfig = field(default_factory=lambda: ClipConfig(eps_low=0.2, eps_high=0.28))
    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.0))
    overlong_shaping: bool = True
    """Add the soft overlong punishment r_len to each reward before the group normalisation."""
    overlong_max_len: int | None = None
    """L_max of the shaping (none: the run's response budget, --rollout.sampling.max-new-tokens; in
    multi-turn episodes --env.max-total-tokens)."""
    overlong_buffer: int | None = None
    """L_cache, the soft-punishment buffer in tokens; none: L_max // 5 (the paper's 4,096 of 20,480)."""
    overlong_factor: float = 1.0
    """Scale of r_len added to the reward (paper: 1)."""
    adv_eps: float = 1e-6
    """Added to the group std before dividing."""

    def __post_init__(self) -> None:
        if self.overlong_max_len is not None and self.overlong_max_len < 1:
            raise ValueError(f"DAPOLoss.overlong_max_len={self.overlong_max_len}: must be >= 1")

    def buffer(self) -> int:
        if self.overlong_max_len is None:
            raise ValueError("DAPOLoss.overlong_max_len is not set: set it to the response budget (the rollout's "
                             "max_new_tokens; a multi-turn episode's max_total_tokens), or overlong_shaping=False")
        return self.overlong_buffer if self.overlong_buffer is not None else max(self.overlong_max_len // 5, 1)

    def shaped_rewards(self, rewards: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """rewards + overlong_factor·r_len(lengths) (rewards unchanged without shaping); ``lengths`` [B]
        count every response token (multi-turn: the observations too; see the module docstring)."""
        if not self.overlong_shaping:
            return rewards.float()
        buffer = self.buffer()
        if lengths is None:
            raise ValueError("DAPOLoss: the overlong shaping needs `lengths`, each response's length in tokens "
                             "(every response token; in a multi-turn episode the observations too, not the loss "
                             "mask's count)")
        r_len = overlong_reward(lengths, self.overlong_max_len or 0, buffer)
        return rewards.float() + self.overlong_factor * r_len.to(rewards.device)

    def compute_advantages(self, rewards: torch.Tensor, group_uid: torch.Tensor,
                           old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None, all_sum: AllSum | None = None,
                           lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Group-normalised advantages [B] of the overlong-shaped (and KL-penalised, if in the reward) rewards;
        ``mask`` is the loss mask (the KL penalty's tokens), ``lengths`` what the shaping measures."""
        rewards = self.penalized_rewards(self.shaped_rewards(rewards, lengths), old_logp, ref_logp, mask)
        return group_advantages(rewards, group_uid, "group", self.adv_eps)
