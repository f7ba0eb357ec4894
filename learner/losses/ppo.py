"""PPO with a learned critic (Ouyang et al. 2022 style RLHF): per-token rewards (score on the
last response token minus a per-token KL penalty), GAE, whitened advantages, clipped value
loss. The policy surrogate is :func:`learner.losses.grpo.policy_loss`.

Learner order per batch: ``token_rewards = ppo_token_rewards(...)`` →
``adv, ret = PPOLoss.compute_advantages(...)`` on the FULL batch (whitening uses full-batch
statistics) → split into mini/micro-batches → ``PPOLoss.__call__``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import ClipConfig, KLConfig
from .core import AggMode, AllSum, aggregate, masked_mean, masked_whiten, to_float
from .grpo import kl_reward_penalty, policy_loss

__all__ = ["gae", "ppo_token_rewards", "value_loss", "PPOLoss"]


@torch.no_grad()
def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked tokens of each row.

    Positions with mask 0 are skipped: the recursion carries the next *valid* token's value
    and advantage across them, so neither the rewards nor the values found on padding leak
    into real tokens, and the last valid token bootstraps from 0 (end of episode).
        δ_t = r_t + γ·V_next − V_t,   A_t = δ_t + γλ·A_next
    Returns (advantages [B,T], returns = A + V [B,T]), both 0 off the mask.
    """
    r = token_rewards.detach().float()
    v = values.detach().float()
    m = mask.to(torch.float32)
    B, T = r.shape
    next_v = torch.zeros(B, dtype=r.dtype, device=r.device)
    next_a = torch.zeros(B, dtype=r.dtype, device=r.device)
    adv = torch.zeros_like(r)
    for t in range(T - 1, -1, -1):
        mt = m[:, t]
        delta = r[:, t] + gamma * next_v - v[:, t]
        a_t = delta + gamma * lam * next_a
        adv[:, t] = a_t * mt
        next_v = torch.where(mt > 0, v[:, t], next_v)
        next_a = torch.where(mt > 0, a_t, next_a)
    returns = (adv + v) * m
    return adv, returns


@torch.no_grad()
def ppo_token_rewards(
    score: torch.Tensor,
    logp_old: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """[B,T] = −kl_coef·(logp_old − ref_logp) on every response token, plus ``score`` [B] on the
    LAST masked token of each row (rows without tokens get no score)."""
    rewards = kl_reward_penalty(logp_old, ref_logp, mask, kl_coef).float()
    B, T = rewards.shape
    pos = torch.arange(T, device=rewards.device).expand(B, T)
    last = torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(dim=-1).values  # [B]
    has = last >= 0
    rows = torch.arange(B, device=rewards.device)[has]
    rewards[rows, last[has]] += score.to(rewards.dtype)[has]
    return rewards


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = 0.2,
    agg_mode: str | AggMode = "token-mean",
    global_tokens: int | float | None = None,
    global_seqs: int | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss ½·max((V − R)², (clip(V, V_old − c, V_old + c) − R)²) per token,
    aggregated like the policy loss (``clip_range=None``: plain ½(V − R)²).
    stats: ``vf_loss``, ``vf_clip_frac`` (tokens where the clipped term is larger),
    ``value_mean``, ``return_mean``."""
    returns = returns.detach()
    old_values = old_values.detach()
    l1 = (values - returns) ** 2
    if clip_range is None:
        per_tok = 0.5 * l1
        clipped = torch.zeros_like(l1, dtype=torch.bool)
    else:
        # clamp V itself (not old + clamp(V - old)): a V inside the range stays bit-identical, so
        # rounding is never counted as clipping in vf_clip_frac
        v_clip = torch.minimum(torch.maximum(values, old_values - clip_range), old_values + clip_range)
        l2 = (v_clip - returns) ** 2
        per_tok = 0.5 * torch.maximum(l1, l2)
        clipped = l2 > l1
    loss = aggregate(per_tok, mask, agg_mode, global_tokens, global_seqs, max_len)
    with torch.no_grad():
        m = mask.to(l1.dtype)
        stats = {
            "vf_loss": to_float(loss),
            "vf_clip_frac": to_float(masked_mean(clipped.to(m.dtype), m)),
            "value_mean": to_float(masked_mean(values, m)),
            "return_mean": to_float(masked_mean(returns, m)),
        }
    return loss, stats


@dataclass
class PPOLoss:
    """PPO objective: policy_loss(whitened A) + vf_coef·value_loss. The KL to the reference is
    in the per-token reward (``kl.coef``, used by :meth:`compute_advantages`)."""

    clip: ClipConfig = field(default_factory=ClipConfig)
    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.05, kind="k1", in_reward=True))
    vf_coef: float = 0.5
    """Weight of the value loss."""
    vf_clip: float | None = 0.2
    """Clip range of the value around the old value (none: unclipped)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch's response tokens."""

    def __post_init__(self) -> None:
        if not self.kl.in_reward or self.kl.kind != "k1":
            raise ValueError(f"PPO puts the KL in the per-token reward as k1 (kl in_reward={self.kl.in_reward}, "
                             f"kind={self.kl.kind!r}): pass --ppo.kl.in-reward true --ppo.kl.kind k1")

    @torch.no_grad()
    def compute_advantages(
        self,
        score: torch.Tensor,
        old_logp: torch.Tensor,
        ref_logp: torch.Tensor | None,
        values: torch.Tensor,
        mask: torch.Tensor,
        all_sum: AllSum | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-batch (advantages [B,T], returns [B,T]); advantages whitened over the mask when
        ``whiten_advantages`` (returns are computed from the un-whitened advantages), over every
        learner rank's rows with ``all_sum``."""
        if ref_logp is None and self.kl.needs_reference:
            raise ValueError(f"PPO kl coef={self.kl.coef} > 0 puts a KL in the reward but ref_logp is None: keep a "
                             f"reference model or set --ppo.kl.coef 0")
        rewards = ppo_token_rewards(score, old_logp, old_logp if ref_logp is None else ref_logp, mask, self.kl.coef)
        adv, ret = gae(rewards, values, mask, self.gamma, self.lam)
        if self.whiten_advantages:
            adv = masked_whiten(adv, mask, shift_mean=True, all_sum=all_sum)
        return adv, ret

    def __call__(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        values: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        mask: torch.Tensor,
        global_tokens: int | float | None = None,
        global_seqs: int | None = None,
        max_len: int | None = None,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``weights``: truncated importance weights of the policy term (the value loss is not weighted)."""
        agg = dict(global_tokens=global_tokens, global_seqs=global_seqs, max_len=max_len)
        c = self.clip
        pg, stats = policy_loss(logp, old_logp, advantages, mask, c.eps_low, c.eps_high, c.dual_clip,
                                c.agg_mode, **agg, weights=weights)
        vf, vstats = value_loss(values, old_values, returns, mask, self.vf_clip, c.agg_mode, **agg)
        loss = pg + self.vf_coef * vf
        stats.update(vstats)
        stats["loss"] = to_float(loss)
        return loss, stats
