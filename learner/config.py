"""Optimisation settings shared by every stage."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate (reached after warmup)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (not applied to norms and biases)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    warmup_steps: int = 10
    """Linear warmup from 0 over this many optimizer updates."""
    total_steps: int = 0
    """Updates over which the cosine decays from lr to min_lr_ratio * lr (0: the run's update count)."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine schedule as a fraction of lr."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    micro_batch_size: int = 0
    """Rows per forward/backward; 0 = the whole (mini)batch at once. Gradients are identical."""
    max_bad_steps: int = 3
    """Consecutive non-finite losses/gradients tolerated (each skipped) before stopping."""
    compile: bool = False
    """torch.compile every decoder block of the learner's models (dynamic shapes). Off by default: on
    2 CPU cores the first step compiles for 1.5-2.5 min and later steps gain at most ~1.2x (RL demo
    learner) or nothing (minimind2-small pretraining), which the recipes' run lengths never pay back
    (docs/performance_notes.md, "torch.compile")."""

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0 and math.isfinite(self.lr),
            "weight_decay": self.weight_decay >= 0,
            "beta1": 0 <= self.beta1 < 1,
            "beta2": 0 <= self.beta2 < 1,
            "warmup_steps": self.warmup_steps >= 0,
            "total_steps": self.total_steps >= 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "grad_clip": self.grad_clip >= 0,
            "micro_batch_size": self.micro_batch_size >= 0,
            "max_bad_steps": self.max_bad_steps >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"--optim.{name.replace('_', '-')}={getattr(self, name)!r} is out of range")

    def for_run(self, updates: int) -> "OptimConfig":
        """This config with the schedule spanning `updates` when total_steps is 0 (the default)."""
        return self if self.total_steps else dataclasses.replace(self, total_steps=max(1, updates))

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer update `step` (0-based): linear warmup, cosine to a floor."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, (self.total_steps or 1) - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
