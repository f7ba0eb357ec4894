"""Warn while a run collapses, from the run's own signals (a policy that collapsed still exits 0).

    watcher = CollapseWatcher()
    for step, stats in ...:
        for message in watcher.update(step, stats):
            print("warning: " + message, file=sys.stderr)

Signals, each against the run's own start (the mean of its first `window` steps), each warned once
until it recovers:
  reward / accuracy to zero   the last `window` steps all below `zero` while the start was >= `start_min`
  entropy collapse            entropy below `entropy_ratio` x the start's (the policy became deterministic)
  KL exploding                KL to the reference above `kl_max` nats per token
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

REWARD_KEYS = ("accuracy", "reward_mean")
ADVICE = "lower --optim.lr, or raise the KL coefficient; --resume from an earlier checkpoint continues before it"


@dataclass
class CollapseWatcher:
    window: int = 5
    """Steps that make the start's baseline and the 'stays at zero' test."""
    zero: float = 0.01
    """A reward / accuracy below this counts as zero."""
    start_min: float = 0.05
    """Only a run that started above this can fall to zero (a policy that never scored is no collapse)."""
    entropy_ratio: float = 0.1
    """Entropy below this fraction of the start's is a collapse."""
    kl_max: float = 1.0
    """KL (nats per token) above this is exploding (healthy runs stay below ~0.1)."""
    _start: dict[str, list[float]] = field(default_factory=dict, repr=False)
    _recent: dict[str, deque] = field(default_factory=dict, repr=False)
    _raised: set[str] = field(default_factory=set, repr=False)

    def _see(self, key: str, value: float) -> tuple[float | None, deque]:
        start = self._start.setdefault(key, [])
        if len(start) < self.window:
            start.append(value)
        recent = self._recent.setdefault(key, deque(maxlen=self.window))
        recent.append(value)
        base = sum(start) / len(start) if len(start) == self.window else None
        return base, recent

    def _once(self, signal: str, collapsing: bool, message: str, out: list[str]) -> None:
        if collapsing and signal not in self._raised:
            self._raised.add(signal)
            out.append(message)
        elif not collapsing:
            self._raised.discard(signal)   # recovered: warn again if it comes back

    def update(self, step: int, stats: dict) -> list[str]:
        """The warnings this step raises (each names the step and the signal)."""
        out: list[str] = []
        values = {k: float(v) for k, v in stats.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        for key in REWARD_KEYS:
            if key not in values:
                continue
            base, recent = self._see(key, values[key])
            falling = (base is not None and base >= self.start_min and len(recent) == self.window
                       and max(recent) < self.zero)
            self._once(key, falling, f"step {step}: the policy may be collapsing: {key} has been {max(recent):.3f} "
                       f"or less for {self.window} steps (it started at {base or 0:.3f}); {ADVICE}", out)
        if "entropy" in values:
            base, recent = self._see("entropy", values["entropy"])
            low = base is not None and base > 0 and values["entropy"] < self.entropy_ratio * base
            self._once("entropy", low, f"step {step}: the policy may be collapsing: entropy {values['entropy']:.4f} "
                       f"is below {self.entropy_ratio:g} x its start ({base or 0:.4f}); {ADVICE}", out)
        if "kl" in values:
            high = values["kl"] > self.kl_max
            self._once("kl", high, f"step {step}: the policy may be collapsing: KL to the reference is "
                       f"{values['kl']:.3f} nats/token (above {self.kl_max:g}); {ADVICE}", out)
        return out
