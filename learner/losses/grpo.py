"""GRPO (Shao et al. 2024) and the PPO-clip policy loss shared by GRPO, PPO and SPO.

Advantage conventions
---------------------
``group_advantages`` uses the UNBIASED (Bessel-corrected) standard deviation, like
``torch.std``'s default and the GRPO implementations in TRL and verl; a group of one has
std 0 (and advantage 0). ``scale="none"`` is Dr.GRPO (no division by the std).

KL placement (``GRPOLoss.kl_in_reward``)
----------------------------------------
- ``False`` (default): β·aggregate(kl_estimate(logp, ref, kl_kind)) is added to the loss.
- ``True``: the KL is a reward penalty. The learner calls
  :meth:`GRPOLoss.compute_advantages` (or :func:`kl_penalized_rewards` then
  :func:`group_advantages`) with the rollout logprobs and the reference logprobs: each
  sequence reward becomes r − β·Σ_t k1_t, BEFORE group normalisation, and the loss itself
  has no KL term.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from .core import AggMode, KLKind, _enum, aggregate, kl_estimate, masked_mean, to_float

__all__ = [
    "AdvScale",
    "group_advantages",
    "zero_variance_groups",
    "policy_loss",
    "kl_reward_penalty",
    "kl_penalized_rewards",
    "GRPOLoss",
]

#: log-ratio clamp before exp() so a wild token cannot produce inf.
LOG_RATIO_CLAMP = 20.0


class AdvScale(str, Enum):
    GROUP = "group"
    BATCH = "batch"
    NONE = "none"


# --------------------------------------------------------------------------- advantages

def _group_index(group_uid: torch.Tensor) -> tuple[torch.Tensor, int]:
    uid = torch.as_tensor(group_uid)
    _, inv = torch.unique(uid, return_inverse=True)
    return inv, int(inv.max().item()) + 1 if inv.numel() else 0


def _group_stats(rewards: torch.Tensor, group_uid: torch.Tensor):
    """Per-row group mean and unbiased group std (0 for groups of one)."""
    r = rewards.float() if not rewards.is_floating_point() else rewards
    inv, G = _group_index(group_uid)
    inv = inv.to(r.device)
    count = torch.zeros(G, dtype=r.dtype, device=r.device).index_add_(0, inv, torch.ones_like(r))
    mean = torch.zeros(G, dtype=r.dtype, device=r.device).index_add_(0, inv, r) / count
    dev = r - mean[inv]
    ss = torch.zeros(G, dtype=r.dtype, device=r.device).index_add_(0, inv, dev * dev)
    std = torch.where(count > 1, (ss / (count - 1).clamp(min=1.0)).sqrt(), torch.zeros_like(ss))
    return dev, std[inv], inv, G


def group_advantages(
    rewards: torch.Tensor,
    group_uid: torch.Tensor,
    scale: str | AdvScale = "group",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Sequence advantages [B] from rewards [B] and group ids [B] (rows need not be adjacent).

    A_i = r_i − mean_g(i), then divided by
    - ``group``: (std_g(i) + eps), unbiased group std;
    - ``batch``: (std(rewards) + eps), unbiased std over the whole batch;
    - ``none``: nothing (Dr.GRPO).
    A group whose rewards are all equal gets advantage exactly 0 in every mode.
    """
    mode = _enum(AdvScale, scale, "advantage scale")
    dev, std_g, _, _ = _group_stats(rewards, group_uid)
    if mode is AdvScale.GROUP:
        return dev / (std_g + eps)
    if mode is AdvScale.BATCH:
        r = rewards.to(dev.dtype)
        bstd = r.std() if r.numel() > 1 else torch.zeros((), dtype=r.dtype, device=r.device)
        return dev / (bstd + eps)
    return dev


def zero_variance_groups(rewards: torch.Tensor, group_uid: torch.Tensor) -> torch.Tensor:
    """Bool mask [B]: True on rows whose group's rewards are all equal (no learning signal)."""
    r = rewards.float() if not rewards.is_floating_point() else rewards
    inv, G = _group_index(group_uid)
    inv = inv.to(r.device)
    gmax = torch.full((G,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, inv, r, reduce="amax", include_self=True)
    gmin = torch.full((G,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, inv, r, reduce="amin", include_self=True)
    return (gmax == gmin)[inv]


# --------------------------------------------------------------------------- policy loss

def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    agg_mode: str | AggMode = "token-mean",
    global_tokens: int | float | None = None,
    global_seqs: int | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip surrogate. logp/old_logp/mask [B,T]; advantages [B,T] or [B] (broadcast).

    ratio = exp(logp − old_logp); L = −min(ratio·A, clip(ratio, 1−eps_low, 1+eps_high)·A)
    (= max of the negated terms). Dual-clip (Ye et al. 2020) with c = ``dual_clip`` > 1: for
    A < 0 the loss is min(L, −c·A), bounding it when the ratio explodes.

    stats (over this call's masked tokens): ``pg_loss``; ``clip_frac`` fraction of tokens where
    the clipped term is the active one (gradient zeroed by clipping); ``dual_clip_frac``;
    ``ratio_mean``; ``ratio_max``; ``approx_kl`` = mean((ratio − 1) − log ratio), the k3
    estimate of KL(old ‖ new), ≥ 0.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if advantages.dim() == logp.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.detach().to(logp.dtype)
    old_logp = old_logp.detach()

    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    clipped = pg2 > pg1
    losses = torch.maximum(pg1, pg2)
    dual_active = torch.zeros_like(clipped)
    if dual_clip is not None:
        pg3 = -advantages * dual_clip
        dual_active = (advantages < 0) & (losses > pg3)
        losses = torch.where(advantages < 0, torch.minimum(losses, pg3), losses)

    loss = aggregate(losses, mask, agg_mode, global_tokens, global_seqs, max_len)

    with torch.no_grad():
        m = mask.to(ratio.dtype)
        has = bool(m.sum() > 0)
        stats = {
            "pg_loss": to_float(loss),
            "clip_frac": to_float(masked_mean(clipped.to(m.dtype), m)),
            "dual_clip_frac": to_float(masked_mean(dual_active.to(m.dtype), m)),
            "ratio_mean": to_float(masked_mean(ratio, m)),
            "ratio_max": to_float(ratio.masked_fill(m == 0, -torch.inf).max()) if has else 1.0,
            "approx_kl": to_float(masked_mean((ratio - 1.0) - log_ratio, m)),
        }
    return loss, stats


# --------------------------------------------------------------------------- KL in reward

def kl_reward_penalty(
    logp_old: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token reward penalty [B,T] = −β·k1 = −β·(logp_old − ref_logp), 0 off the mask."""
    k1 = kl_estimate(logp_old.detach(), ref_logp.detach(), KLKind.K1)
    return -beta * k1 * mask.to(k1.dtype)


def kl_penalized_rewards(
    rewards: torch.Tensor, logp_old: torch.Tensor, ref_logp: torch.Tensor,
    mask: torch.Tensor, beta: float,
) -> torch.Tensor:
    """Sequence rewards [B] with the KL-in-reward penalty: r − β·Σ_t k1_t (GRPO applies this
    before group normalisation)."""
    return rewards.to(logp_old.dtype) + kl_reward_penalty(logp_old, ref_logp, mask, beta).sum(-1)


# --------------------------------------------------------------------------- GRPO loss

@dataclass
class GRPOLoss:
    """GRPO objective. ``__call__`` = policy_loss + kl_coef·aggregate(kl_estimate(logp, ref))
    (the KL term only when ``kl_in_reward`` is False and ``kl_coef`` > 0)."""

    eps_low: float = 0.2
    eps_high: float = 0.2          # > eps_low gives DAPO's clip-higher (e.g. 0.28)
    dual_clip: float | None = None
    kl_coef: float = 0.04           # β
    kl_kind: str = "k3"
    kl_in_reward: bool = False
    agg_mode: str = "token-mean"
    adv_scale: str = "group"        # "none" = Dr.GRPO (use with agg_mode="seq-mean-token-sum-norm")
    adv_eps: float = 1e-6

    def __post_init__(self) -> None:
        _enum(KLKind, self.kl_kind, "kl kind")
        _enum(AggMode, self.agg_mode, "aggregation mode")
        _enum(AdvScale, self.adv_scale, "advantage scale")

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_coef > 0 and not self.kl_in_reward

    @property
    def kl_in_advantages(self) -> bool:
        """The rewards are KL-penalised before the advantages (these then need old logprobs)."""
        return self.kl_coef > 0 and self.kl_in_reward

    def compute_advantages(
        self,
        rewards: torch.Tensor,
        group_uid: torch.Tensor,
        old_logp: torch.Tensor | None = None,
        ref_logp: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sequence advantages [B] for the full batch (compute BEFORE splitting into
        micro-batches). With ``kl_in_reward`` the rewards are KL-penalised first."""
        if self.kl_in_advantages:
            if old_logp is None or ref_logp is None or mask is None:
                raise ValueError("kl_in_reward needs old_logp, ref_logp and mask")
            rewards = kl_penalized_rewards(rewards, old_logp, ref_logp, mask, self.kl_coef)
        return group_advantages(rewards, group_uid, self.adv_scale, self.adv_eps)

    def __call__(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        ref_logp: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        global_tokens: int | float | None = None,
        global_seqs: int | None = None,
        max_len: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        agg = dict(global_tokens=global_tokens, global_seqs=global_seqs, max_len=max_len)
        pg, stats = policy_loss(logp, old_logp, advantages, mask, self.eps_low, self.eps_high,
                                self.dual_clip, self.agg_mode, **agg)
        loss = pg
        if ref_logp is not None:
            kl_tok = kl_estimate(logp, ref_logp.detach(), self.kl_kind)
            if self.kl_in_loss:
                kl_term = aggregate(kl_tok, mask, self.agg_mode, **agg)
                loss = loss + self.kl_coef * kl_term
            stats["kl"] = to_float(masked_mean(kl_tok.detach(), mask))
        elif self.kl_in_loss:
            raise ValueError("GRPOLoss has kl_coef > 0 with the KL in the loss but ref_logp is None")
        stats["loss"] = to_float(loss)
        return loss, stats
