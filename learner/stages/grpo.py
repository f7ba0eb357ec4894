"""GRPO stage: group-normalised advantages over the FULL batch, then the clipped policy loss (+ KL)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from contract.batch import RolloutBatch
from contract.stats import total

from ..distributed import Comm
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

    def __call__(self, batch: RolloutBatch, comm: Comm | None = None) -> tuple[RolloutBatch | None, bool]:
        """(batch to train on or None, whether more rollouts are needed first). With learner ranks
        (`comm`), each holds whole groups of its own; the counts that decide are summed over ranks, so
        every rank decides alike (a rank may train on no rows)."""
        comm = comm or Comm()
        groups_in = len(torch.unique(batch.group_uid))
        keep = (~zero_variance_groups(batch.rewards, batch.group_uid)).nonzero().squeeze(-1)
        if len(keep):
            self.pending.append(batch.select(keep))
        have = sum(len(torch.unique(b.group_uid)) for b in self.pending)
        groups_in, have = comm.sum_floats(groups_in, have)
        if have < (self.target_groups or groups_in) and self.refills < self.max_refills:
            self.refills += 1
            return None, True
        self.refills = 0
        if not have:
            self.pending = []
            return None, False
        merged = RolloutBatch.concat(self.pending) if self.pending else batch.select([])
        self.pending = []
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
            kept, need_more = self.filter(batch, learner.comm)
            if kept is None:
                stats = {"reward_mean": float(batch.rewards.mean()) if len(batch) else 0.0,
                         "skipped_groups": 1.0, "rows": total(len(batch))}
                return StepPlan([], stats, need_more)
            batch = kept
        one = self.update.single_update and not self.loss_fn.kl.in_advantages
        exp, stats = self.experience(learner, batch, old_from_update=one)
        uid = batch.group_uid.to(learner.device)
        rewards = batch.rewards.to(learner.device)
        # each learner rank holds whole groups: group statistics are its own; the batch std sums over ranks
        exp.adv = self.loss_fn.compute_advantages(rewards, uid, exp.old_logp, exp.ref_logp, exp.mask,
                                                  all_sum=learner.comm.all_sum if learner.comm.distributed else None,
                                                  lengths=exp.response_lengths)
        stats = self.batch_stats(batch, stats)
        if len(batch):
            stats["zero_var_frac"] = float(zero_variance_groups(rewards, uid).float().mean())
        return StepPlan(self.minibatches(learner, exp), stats)
