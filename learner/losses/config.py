"""The settings GRPO, PPO and SPO share, stated once: the clipped-ratio policy loss and the KL to the
frozen reference. Each algorithm's loss composes them (`--grpo.clip.eps-high`, `--ppo.kl.coef`)."""
from __future__ import annotations

from dataclasses import dataclass

from .core import AggMode, KLKind, _enum


@dataclass
class ClipConfig:
    eps_low: float = 0.2
    """Lower clip of the ratio: 1 - eps_low."""
    eps_high: float = 0.2
    """Upper clip of the ratio: 1 + eps_high (> eps_low is DAPO's clip-higher, e.g. 0.28)."""
    dual_clip: float | None = None
    """Dual-clip bound c > 1 for negative advantages (none disables it)."""
    agg_mode: str = "token-mean"
    """How token losses become one number: token-mean, seq-mean-token-mean, seq-mean-token-sum-norm."""

    def __post_init__(self) -> None:
        _enum(AggMode, self.agg_mode, "aggregation mode")
        if self.eps_low < 0 or self.eps_high < 0 or self.eps_low >= 1:
            raise ValueError(f"clip eps_low={self.eps_low}, eps_high={self.eps_high}: need 0 <= eps_low < 1 "
                             f"and eps_high >= 0")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"clip dual_clip={self.dual_clip}: must be > 1 (or none)")


@dataclass
class KLConfig:
    coef: float = 0.0
    """beta: weight of the KL to the frozen reference (0 disables it and the reference model)."""
    kind: str = "k3"
    """Estimator of the KL in the loss: k1, k2 or k3 (the per-token reward penalty is always k1)."""
    in_reward: bool = False
    """Put the KL in the reward (r - beta * sum_t k1_t before the advantages) instead of the loss."""

    def __post_init__(self) -> None:
        _enum(KLKind, self.kind, "kl kind")
        if self.coef < 0:
            raise ValueError(f"kl coef={self.coef}: must be >= 0")

    @property
    def needs_reference(self) -> bool:
        """A KL term (in the loss or the reward) reads the frozen reference; with coef 0 nothing does, and
        the recipes build no reference model and run no reference forward."""
        return self.coef > 0

    @property
    def in_loss(self) -> bool:
        return self.coef > 0 and not self.in_reward

    @property
    def in_advantages(self) -> bool:
        """The rewards are KL-penalised before the advantages (which then need old logprobs)."""
        return self.coef > 0 and self.in_reward
