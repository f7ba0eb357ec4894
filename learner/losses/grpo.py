"""GRPO (Shao et al. 2024) and the PPO-clip policy loss shared by GRPO, PPO and SPO.

Advantage conventions
---------------------
``group_advantages`` uses the UNBIASED (Bessel-corrected) standard deviation, like
``torch.std``'s default and the GRPO implementations in TRL and verl; a group of one has
std 0 (and advantage 0). ``scale="none"`` is Dr.GRPO (no division by the std).

KL placement (``KLConfig.in_reward``)
-------------------------------------
- ``False`` (default): β·aggregate(kl_estimate(logp, ref, kind)) is added to the loss.
- ``True``: the KL is a reward penalty. The learner calls
  :meth:`GRPOLoss.compute_advantages` (or :func:`kl_penalized_rewards` then
  :func:`group_advantages`) with the old logprobs and the reference logprobs: each
  sequence reward becomes r − β·Σ_t k1_t, BEFORE group normalisation, and the loss itself
  has no KL term.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from contract.stats import maximum

from .config import ClipConfig, KLConfig
from .core import (AggMode, AllSum, KLKind, _enum, aggregate, apply_weights, global_mean_var, kl_estimate, masked_mean,
                   to_float)

__all__ = [
    "AdvScale",
    "group_advantages",
    "zero_variance_groups",
    "policy_loss",
    "kl_reward_penalty",
    "kl_penalized_rewards",
    "KLTerm",
    "ClippedPolicyLoss",
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
    all_sum: AllSum | None = None,
) -> torch.Tensor:
    """Sequence advantages [B] from rewards [B] and group ids [B] (rows need not be adjacent).

    A_i = r_i − mean_g(i), then divided by
    - ``group``: (std_g(i) + eps), unbiased group std;
    - ``batch``: (std(rewards) + eps), unbiased std over the whole batch;
    - ``none``: nothing (Dr.GRPO).
    A group whose rewards are all equal gets advantage exactly 0 in every mode. A batch split over
    learner ranks keeps whole groups on each; ``all_sum`` makes the batch std that of every rank's rows.
    """
    mode = _enum(AdvScale, scale, "advantage scale")
    dev, std_g, _, _ = _group_stats(rewards, group_uid)
    # an all-equal group's float mean can be one rounding unit off its members (1.05 x 8), and that
    # unit divided by std ~ 0 + eps becomes a large advantage: such groups carry no signal, give 0
    dev = dev.masked_fill(zero_variance_groups(rewards, group_uid), 0.0)
    if mode is AdvScale.GROUP:
        return dev / (std_g + eps)
    if mode is AdvScale.BATCH:
        r = rewards.to(dev.dtype)
        if all_sum is not None:
            bstd = global_mean_var(r, torch.ones_like(r), all_sum)[1].sqrt()
        else:
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
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip surrogate. logp/old_logp/mask [B,T]; advantages [B,T] or [B] (broadcast).

    ratio = exp(logp − old_logp); L = −min(ratio·A, clip(ratio, 1−eps_low, 1+eps_high)·A)
    (= max of the negated terms). Dual-clip (Ye et al. 2020) with c = ``dual_clip`` > 1: for
    A < 0 the loss is min(L, −c·A), bounding it when the ratio explodes.

    stats (over this call's masked tokens): ``pg_loss``; ``clip_frac`` fraction of tokens where
    the clipped term is the active one (gradient zeroed by clipping); ``dual_clip_frac``;
    ``ratio_mean``; ``ratio_max``; ``approx_kl`` = mean((ratio − 1) − log ratio), the k3
    estimate of KL(old ‖ new), ≥ 0.

    ``weights`` (detached, [B,T] or [B]) multiply each token's loss before aggregation: the truncated
    importance weights of :mod:`learner.losses.tis` (None: unweighted).
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

    loss = aggregate(apply_weights(losses, weights), mask, agg_mode, global_tokens, global_seqs, max_len)

    with torch.no_grad():
        m = mask.to(ratio.dtype)
        has = bool(m.sum() > 0)
        stats = {
            "pg_loss": to_float(loss),
            "clip_frac": to_float(masked_mean(clipped.to(m.dtype), m)),
            "dual_clip_frac": to_float(masked_mean(dual_active.to(m.dtype), m)),
            "ratio_mean": to_float(masked_mean(ratio, m)),
            "ratio_max": maximum(ratio.masked_fill(m == 0, -torch.inf).max()) if has else 1.0,
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

class KLTerm:
    """The KL to the frozen reference every policy loss of the family handles alike (needs ``self.kl``):
    in the loss (:meth:`with_kl`) or in the reward (:meth:`penalized_rewards`)."""

    kl: KLConfig

    def with_kl(self, loss: torch.Tensor, stats: dict[str, float], logp: torch.Tensor,
                ref_logp: torch.Tensor | None, mask: torch.Tensor, agg_mode: str, agg: dict) -> torch.Tensor:
        """loss + kl.coef·aggregate(kl_estimate(logp, ref)) when the KL is in the loss; logs ``kl`` (when
        a reference is given) and ``loss`` into ``stats``. The KL term is never importance-weighted."""
        if ref_logp is not None:
            kl_tok = kl_estimate(logp, ref_logp.detach(), self.kl.kind)
            if self.kl.in_loss:
                loss = loss + self.kl.coef * aggregate(kl_tok, mask, agg_mode, **agg)
            stats["kl"] = to_float(masked_mean(kl_tok.detach(), mask))
        elif self.kl.in_loss:
            raise ValueError(f"{type(self).__name__}: kl coef={self.kl.coef} > 0 puts a KL term in the loss but "
                             f"ref_logp is None: keep a reference model or set the section's kl.coef to 0")
        stats["loss"] = to_float(loss)
        return loss

    def penalized_rewards(self, rewards: torch.Tensor, old_logp: torch.Tensor | None,
                          ref_logp: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """Rewards with the KL penalty when it is in the reward (else unchanged)."""
        if not self.kl.in_advantages:
            return rewards
        if old_logp is None or ref_logp is None or mask is None:
            raise ValueError("kl in_reward needs old_logp, ref_logp and mask")
        return kl_penalized_rewards(rewards, old_logp, ref_logp, mask, self.kl.coef)


@dataclass
class ClippedPolicyLoss(KLTerm):
    """policy_loss + kl.coef·aggregate(kl_estimate(logp, ref)) (the KL term only when it is in the
    loss): the objective GRPO, Dr.GRPO, DAPO and SPO share; they differ in their advantages and
    defaults. ``weights`` are the truncated importance weights (policy term only)."""

    clip: ClipConfig = field(default_factory=ClipConfig)
    kl: KLConfig = field(default_factory=KLConfig)

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
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        agg = dict(global_tokens=global_tokens, global_seqs=global_seqs, max_len=max_len)
        c = self.clip
        pg, stats = policy_loss(logp, old_logp, advantages, mask, c.eps_low, c.eps_high, c.dual_clip,
                                c.agg_mode, **agg, weights=weights)
        return self.with_kl(pg, stats, logp, ref_logp, mask, c.agg_mode, agg), stats


@dataclass
class GRPOLoss(ClippedPolicyLoss):
    """GRPO (Shao et al. 2024): group-normalised advantages and the clipped policy loss + KL."""

    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.04))
    """KL to the reference in the loss, the paper's beta 0.04."""

    adv_scale: str = "group"
    """Advantage scale: group (std of the prompt's G samples), batch, or none (Dr.GRPO; use with
    clip.agg_mode seq-mean-token-sum-norm)."""
    adv_eps: float = 1e-6
    """Added to the std before dividing."""

    def __post_init__(self) -> None:
        _enum(AdvScale, self.adv_scale, "advantage scale")

    def compute_advantages(
        self,
        rewards: torch.Tensor,
        group_uid: torch.Tensor,
        old_logp: torch.Tensor | None = None,
        ref_logp: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        all_sum: AllSum | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sequence advantages [B] for the full batch (compute BEFORE splitting into
        micro-batches). With the KL in the reward the rewards are penalised first. ``lengths``
        (each row's response length) is part of the family's interface; only DAPO reads it."""
        rewards = self.penalized_rewards(rewards, old_logp, ref_logp, mask)
        return group_advantages(rewards, group_uid, self.adv_scale, self.adv_eps, all_sum)

