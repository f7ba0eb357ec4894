"""CISPO: Clipped IS-weight Policy Optimization, from "MiniMax-M1: Scaling Test-Time Compute
Efficiently with Lightning Attention" (MiniMax 2025, arXiv 2506.13585); the loss MiniMind-3 trains with.

PPO/GRPO clipping zeroes the gradient of every token whose ratio left the trust region: rare
tokens that matter (reflective "However", "Wait") get a large ratio after one update and stop
learning. CISPO clips the importance-sampling WEIGHT instead and stops its gradient, so every token
keeps a REINFORCE gradient, only with a bounded weight:

    ρ_it  = π_θ(y_it) / π_old(y_it),   ŵ_it = sg[clip(ρ_it, ρ_min, ρ_max)]
    J     = mean over tokens of ŵ_it · A_i · log π_θ(y_it)          (L = −J)
    ∇L    = −mean over tokens of ŵ_it · A_i · ∇log π_θ(y_it)        (no token has zero gradient)

Defaults follow MiniMind-3 (jingyaogong/minimind, trainer/train_grpo.py, loss_type="cispo",
its default): weight upper bound ρ_max = 5.0 (its ``epsilon_high``, used as the bound on ρ
itself), no lower bound, k3 KL toward the reference in the loss with ``kl.coef`` β = 0.1, per-sequence token
means averaged over sequences (seq-mean-token-mean), advantages (r − mean_g)/(std_g + 1e-4) with
the population (biased) group std. The paper itself uses a token mean over the batch
(``agg_mode="token-mean"``), only an upper bound tuned (ε_high^IS; no lower bound) and GRPO's
group-normalised advantages.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from contract.stats import maximum

from .config import KLConfig
from .core import AggMode, AllSum, _enum, aggregate, apply_weights, masked_mean, to_float
from .grpo import LOG_RATIO_CLAMP, KLTerm, group_advantages

__all__ = ["CISPOLoss", "population_group_advantages"]


def population_group_advantages(rewards: torch.Tensor, group_uid: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(r − mean_g) / (std_g + eps) [B] with the POPULATION std (÷ n, as MiniMind-3's
    ``std(unbiased=False)``); a group whose rewards are all equal gets exactly 0."""
    dev = group_advantages(rewards, group_uid, scale="none")
    _, inv = torch.unique(torch.as_tensor(group_uid), return_inverse=True)
    inv = inv.to(dev.device)
    G = int(inv.max().item()) + 1 if inv.numel() else 0
    count = torch.zeros(G, dtype=dev.dtype, device=dev.device).index_add_(0, inv, torch.ones_like(dev))
    ss = torch.zeros(G, dtype=dev.dtype, device=dev.device).index_add_(0, inv, dev * dev)
    return dev / ((ss / count).sqrt()[inv] + eps)


@dataclass
class CISPOLoss(KLTerm):
    """CISPO objective (arXiv 2506.13585, MiniMind-3's defaults): stop-gradient clipped IS weight
    times advantage times log-probability, on every token. Its bounds are on the IS weight itself,
    not a PPO trust region, so it has no ``clip`` section."""

    ratio_max: float = 5.0
    """Upper bound of the IS weight ρ (MiniMind-3: 5.0; the paper: 1 + ε_high^IS)."""
    ratio_min: float | None = None
    """Optional lower bound of the IS weight (MiniMind-3 and the paper: none)."""
    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.1))
    agg_mode: str = "seq-mean-token-mean"
    """token-mean (the paper), seq-mean-token-mean (MiniMind-3) or seq-mean-token-sum-norm."""
    adv_eps: float = 1e-4
    """Added to the population group std before dividing (MiniMind-3: 1e-4)."""

    def __post_init__(self) -> None:
        _enum(AggMode, self.agg_mode, "CISPOLoss aggregation mode")
        lo = 0.0 if self.ratio_min is None else self.ratio_min
        if not 0.0 <= lo < 1.0 < self.ratio_max:
            raise ValueError(f"CISPOLoss: need 0 <= ratio_min < 1 < ratio_max, got ratio_min={self.ratio_min}, "
                             f"ratio_max={self.ratio_max}")

    def compute_advantages(self, rewards: torch.Tensor, group_uid: torch.Tensor,
                           old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None, all_sum: AllSum | None = None,
                           lengths: torch.Tensor | None = None) -> torch.Tensor:
        rewards = self.penalized_rewards(rewards, old_logp, ref_logp, mask)
        return population_group_advantages(rewards, group_uid, self.adv_eps)

    def __call__(self, logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                 advantages: torch.Tensor, mask: torch.Tensor, global_tokens: int | float | None = None,
                 global_seqs: int | None = None, max_len: int | None = None,
                 weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        agg = dict(global_tokens=global_tokens, global_seqs=global_seqs, max_len=max_len)
        adv = advantages.detach().to(logp.dtype)
        adv = adv.unsqueeze(-1) if adv.dim() == logp.dim() - 1 else adv
        with torch.no_grad():
            log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            ratio = torch.exp(log_ratio)
            w = ratio.clamp(min=self.ratio_min, max=self.ratio_max)
        losses = -w * adv * logp
        pg = aggregate(apply_weights(losses, weights), mask, self.agg_mode, **agg)
        with torch.no_grad():
            m = mask.to(ratio.dtype)
            has = bool(m.sum() > 0)
            stats = {"pg_loss": to_float(pg),
                     "clip_frac": to_float(masked_mean((w != ratio).to(m.dtype), m)),
                     "is_weight_mean": to_float(masked_mean(w, m)),
                     "ratio_mean": to_float(masked_mean(ratio, m)),
                     "ratio_max": maximum(ratio.masked_fill(m == 0, -torch.inf).max()) if has else 1.0,
                     "approx_kl": to_float(masked_mean((ratio - 1.0) - log_ratio, m))}
        return self.with_kl(pg, stats, logp, ref_logp, mask, self.agg_mode, agg), stats
