"""SPO: Single-stream Policy Optimization (arXiv 2509.13232).

One sample per prompt; the baseline comes from a persistent per-prompt Beta(α, β) tracker
of the success probability instead of a group of samples.

Per step, for the batch's prompt keys (in this order):
    v    = tracker.baseline(keys)                    # α/(α+β), read BEFORE the update
    A    = spo_advantages(rewards, v)               # r − v, normalised over the batch
    D    = policy_drift(now, then, mask)              # the prompt's previous response, rescored now:
                                                     #   mean_t |log π_now − log π_then| over its tokens
    tracker.update(keys, rewards, D)                 # ρ = clip(2^(−D/D_half), ρ_min, ρ_max)
    tracker.remember(key, prompt, response, logp)    # this visit's response and its sampling logprobs
                                                     # α ← ρα + r,  β ← ρβ + (1 − r)
and the loss is :class:`SPOLoss` (the clipped policy loss + KL) with A broadcast over tokens. D is
the policy's drift as the paper (and its authors' recipe) define it: the SAME stored response scored
by the current and by the sampling policy, so an unchanged policy has D = 0 and ρ = ρ_max.

Defaults: D_half = 0.06, ρ_min = 0.875, ρ_max = 0.96 (the paper's values; ρ_max bounds the
memory at an effective window of 1/(1−ρ_max) = 25 observations, ρ_min keeps at least
1/(1−ρ_min) = 8). Unseen prompts start from ``prior`` = (α0, β0) = (1, 1) (v = 0.5) unless
initialised with :meth:`SPOTracker.init_from_samples`, which sets
α = n0·mean, β = n0·(1 − mean) with an effective sample count n0 (default
1/(1−ρ_min) = 8, the steady-state count at the fastest forgetting rate).

Keys are stored as ``str(key)`` so that :meth:`SPOTracker.state_dict` is JSON-able and
survives a round trip through a checkpoint unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

import torch

from .config import KLConfig
from .core import AllSum, global_mean_var
from .grpo import ClippedPolicyLoss

__all__ = ["SPOTracker", "SPOLoss", "spo_advantages", "policy_drift"]


def spo_advantages(rewards: torch.Tensor, baselines: torch.Tensor, eps: float = 1e-6,
                   all_sum: AllSum | None = None) -> torch.Tensor:
    """A = r − v, then (A − mean(A)) / (std(A) + eps) over the batch (unbiased std, as
    ``torch.std``); over every learner rank's rows with ``all_sum``. A batch of one gives 0."""
    a = rewards.float() - baselines.to(rewards.device).float()
    if all_sum is not None:
        n = all_sum(torch.tensor([float(a.numel())], device=a.device))[0]
        if n < 2:
            return torch.zeros_like(a)
        mean, var = global_mean_var(a, torch.ones_like(a), all_sum)
        return (a - mean) / (var.sqrt() + eps)
    if a.numel() < 2:
        return torch.zeros_like(a)
    return (a - a.mean()) / (a.std() + eps)


def policy_drift(now_logp: torch.Tensor, then_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """D [B] = mean over each row's masked tokens of |log π_now − log π_then| (0 for empty rows)."""
    m = mask.to(now_logp.dtype)
    return ((now_logp - then_logp).abs() * m).sum(-1) / m.sum(-1).clamp(min=1.0)


@dataclass
class SPOLoss(ClippedPolicyLoss):
    """SPO's objective: the clipped policy loss (+ KL) on tracker-baseline advantages. The SPO stage
    computes them for any policy loss as ``spo_advantages(loss.penalized_rewards(r, ...), v)``: with the
    KL in the reward r is penalised first (the tracker still sees the raw success)."""

    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.01))


class SPOTracker:
    """Per-prompt Beta(α, β) value tracker with KL-adaptive forgetting (see module docs)."""

    def __init__(
        self,
        d_half: float = 0.06,
        rho_min: float = 0.875,
        rho_max: float = 0.96,
        prior: tuple[float, float] = (1.0, 1.0),
        n0: float | None = None,
        weight_floor: float = 0.05,
    ) -> None:
        if not 0.0 < rho_min <= rho_max <= 1.0:
            raise ValueError(f"need 0 < rho_min <= rho_max <= 1, got {rho_min}, {rho_max}")
        if d_half <= 0:
            raise ValueError(f"d_half must be > 0, got {d_half}")
        if prior[0] <= 0 or prior[1] <= 0:
            raise ValueError(f"prior must be positive, got {prior}")
        self.d_half = float(d_half)
        self.rho_min = float(rho_min)
        self.rho_max = float(rho_max)
        self.prior = (float(prior[0]), float(prior[1]))
        self.n0 = float(n0) if n0 is not None else 1.0 / (1.0 - self.rho_min)
        self.weight_floor = float(weight_floor)
        self._ab: dict[str, list[float]] = {}      # key -> [alpha, beta]
        self._memory: dict[str, tuple[list[int], list[int], list[float]]] = {}  # key -> last response

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _key(k: Hashable) -> str:
        return str(k)

    def __len__(self) -> int:
        return len(self._ab)

    def __contains__(self, key: Hashable) -> bool:
        return self._key(key) in self._ab

    def params(self, key: Hashable) -> tuple[float, float]:
        """(α, β) of ``key`` (the prior for an unseen key)."""
        a, b = self._ab.get(self._key(key), self.prior)
        return float(a), float(b)

    def _value(self, key: Hashable) -> float:
        a, b = self.params(key)
        s = a + b
        return a / s if s > 0 else 0.5

    def baseline(self, keys: Sequence[Hashable]) -> torch.Tensor:
        """v = α/(α+β) per key, [B] float32. Call BEFORE :meth:`update` for the same batch."""
        return torch.tensor([self._value(k) for k in keys], dtype=torch.float32)

    def sampling_weights(self, keys: Sequence[Hashable]) -> torch.Tensor:
        """Prompt sampling weights √(v(1−v)) + weight_floor (0.05): most weight on prompts
        the policy solves about half the time. [B] float32 (unnormalised)."""
        v = self.baseline(keys)
        return torch.sqrt(v * (1.0 - v)) + self.weight_floor

    def rho(self, drift: torch.Tensor | float) -> torch.Tensor:
        """ρ = clip(2^(−D/D_half), ρ_min, ρ_max)."""
        d = torch.as_tensor(drift, dtype=torch.float64)
        return torch.pow(2.0, -d / self.d_half).clamp(self.rho_min, self.rho_max)

    def remembered(self, key: Hashable) -> tuple[list[int], list[int], list[float]] | None:
        """(prompt ids, response ids, response logprobs at sampling) of the key's last visit."""
        got = self._memory.get(self._key(key))
        return None if got is None else (list(got[0]), list(got[1]), list(got[2]))

    # ------------------------------------------------------------------ writes
    def update(self, keys: Sequence[Hashable], rewards: torch.Tensor | Sequence[float],
               drift: torch.Tensor | Sequence[float] | None = None) -> None:
        """α ← ρα + r, β ← ρβ + (1 − r) per row, in order (a key appearing twice is updated
        twice). ``rewards`` must lie in [0, 1]; ``drift`` None means D = 0 (ρ = ρ_max)."""
        r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
        if r.numel() != len(keys):
            raise ValueError(f"{len(keys)} keys but {r.numel()} rewards")
        if r.numel() and (bool((r < 0).any()) or bool((r > 1).any()) or bool(torch.isnan(r).any())):
            raise ValueError("SPO rewards must lie in [0, 1]")
        d = torch.zeros_like(r) if drift is None else torch.as_tensor(drift, dtype=torch.float64).reshape(-1)
        rho = self.rho(d).tolist()
        for k, rr, p in zip(keys, r.tolist(), rho):
            a, b = self.params(k)
            self._ab[self._key(k)] = [p * a + rr, p * b + (1.0 - rr)]

    def remember(self, key: Hashable, prompt_ids: Sequence[int], response_ids: Sequence[int],
                 logp: Sequence[float]) -> None:
        """Store this visit's response (unpadded ids) and its logprobs under the sampling policy: the
        next visit rescores it to measure the policy's drift."""
        if len(response_ids) != len(logp):
            raise ValueError(f"{len(response_ids)} response tokens but {len(logp)} logprobs")
        self._memory[self._key(key)] = ([int(t) for t in prompt_ids], [int(t) for t in response_ids],
                                        [float(x) for x in logp])

    def init_from_samples(self, key: Hashable, rewards: Iterable[float], n0: float | None = None) -> None:
        """Offline initialisation from a few sampled rewards in [0, 1]:
        α = n0·mean, β = n0·(1 − mean) (n0 defaults to the tracker's ``n0``)."""
        rs = [float(x) for x in rewards]
        if not rs:
            raise ValueError("init_from_samples needs at least one reward")
        if any(not 0.0 <= x <= 1.0 for x in rs):
            raise ValueError("SPO rewards must lie in [0, 1]")
        n = self.n0 if n0 is None else float(n0)
        if n <= 0:
            raise ValueError(f"n0 must be > 0, got {n}")
        mean = sum(rs) / len(rs)
        self._ab[self._key(key)] = [n * mean, n * (1.0 - mean)]

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (config, per-key α, β and last response with its logprobs)."""
        return {
            "version": 2,
            "config": {"d_half": self.d_half, "rho_min": self.rho_min, "rho_max": self.rho_max,
                       "prior": list(self.prior), "n0": self.n0, "weight_floor": self.weight_floor},
            "ab": {k: list(v) for k, v in self._ab.items()},
            "memory": {k: [list(p), list(r), list(lp)] for k, (p, r, lp) in self._memory.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cfg = state.get("config", {})
        self.d_half = float(cfg.get("d_half", self.d_half))
        self.rho_min = float(cfg.get("rho_min", self.rho_min))
        self.rho_max = float(cfg.get("rho_max", self.rho_max))
        self.prior = tuple(float(x) for x in cfg.get("prior", self.prior))  # type: ignore[assignment]
        self.n0 = float(cfg.get("n0", self.n0))
        self.weight_floor = float(cfg.get("weight_floor", self.weight_floor))
        self._ab = {str(k): [float(v[0]), float(v[1])] for k, v in state.get("ab", {}).items()}
        self._memory = {str(k): ([int(t) for t in v[0]], [int(t) for t in v[1]], [float(x) for x in v[2]])
                        for k, v in state.get("memory", {}).items()}
        for k, (a, b) in self._ab.items():
            if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < 0:
                raise ValueError(f"bad SPO tracker state for key {k!r}: alpha={a}, beta={b}")
