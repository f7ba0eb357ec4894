"""GRPO stage: group-normalised advantages over the FULL batch, then the clipped policy loss (+ KL)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rl.batch import RolloutBatch

from ..learner import Learner, StepPlan
from ..losses import GRPOLoss, PolicyLoss, zero_variance_groups
from .rl_common import RLStage, RLUpdateConfig


@dataclass
class ZeroVarianceFilter:
    """Drops groups whose G rewards are all equal (no signal) and buffers the rest until
    `target_groups` informative groups are collected, asking for up to `max_refills` more rollouts."""
    target_groups: int = 0
    """Informative groups to collect before updating (0 = the incoming batch's group count)."""
    max_refills: int = 2
    """Extra rollout rounds per step before training on what was collected."""
    pending: list = field(default_factory=list, repr=False)
    refills: int = 0

    def __call__(self, batch: RolloutBatch) -> tuple[RolloutBatch | None, bool]:
        """(batch to train on or None, whether more rollouts are needed first)."""
        groups_in = len(torch.unique(batch.group_uid))
        keep = (~zero_variance_groups(batch.rewards, batch.group_uid)).nonzero().squeeze(-1)
        if len(keep):
            self.pending.append(batch.select(keep))
        have = sum(len(torch.unique(b.group_uid)) for b in self.pending)
        if have < (self.target_groups or groups_in) and self.refills < self.max_refills:
            self.refills += 1
            return None, True
        self.refills = 0
        if not self.pending:
            return None, False
        merged, self.pending = RolloutBatch.concat(self.pending), []
        return merged, False


@dataclass
class GRPOStage(RLStage):
    loss_fn: PolicyLoss = field(default_factory=GRPOLoss)
    """Any loss of the family (learner.losses.family): GRPO, Dr.GRPO, DAPO, GSPO, CISPO."""
    update: RLUpdateConfig = field(default_factory=RLUpdateConfig)
    filter: ZeroVarianceFilter | None = None
    """Zero-variance group filtering with refill (None: train on every group)."""
    seed: int = 0
    """Seed of the minibatch shuffle (the recipe derives it from the run's --seed)."""
    name: str = "grpo"

    def plan(self, learner: Learner, batch: RolloutBatch) -> StepPlan:
        if self.filter is not None:
            kept, need_more = self.filter(batch)
            if kept is None:
                return StepPlan([], {"reward_mean": float(batch.rewards.mean()), "skipped_groups": 1.0}, need_more)
            batch = kept
        one = self.update.single_update and not self.loss_fn.kl.in_advantages
        exp, stats = self.experience(learner, batch, old_from_update=one)
        uid = batch.group_uid.to(learner.device)
        rewards = batch.rewards.to(learner.device)
        exp.adv = self.loss_fn.compute_advantages(rewards, uid, exp.old_logp, exp.ref_logp, exp.mask)
        stats = self.batch_stats(batch, stats)
        stats["zero_var_frac"] = float(zero_variance_groups(rewards, uid).float().mean())
        return StepPlan(self.minibatches(learner, exp), stats)
