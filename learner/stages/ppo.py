"""PPO stage: a critic (`learner.critic`, a MiniMindScoreModel) and GAE over the full batch; the KL
to the reference is in the per-token reward. The value of the state before response token t is read
at position P-1+t."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from contract.batch import RolloutBatch

from ..experience import Micro
from ..learner import Learner, StepPlan
from ..losses import PPOLoss, masked_mean
from .logprobs import response_hidden
from .rl_common import RLStage, RLUpdateConfig, by_micro_batch


def critic_values(critic: nn.Module, seq: torch.Tensor, attn: torch.Tensor, R: int) -> torch.Tensor:
    """[B, R] value of the state before each response token (a shared prompt through the trunk once)."""
    h, wanted = response_hidden(critic.model, seq, attn, R)
    return wanted.unpack(critic.score(h).squeeze(-1).float())


@dataclass
class PPOStage(RLStage):
    loss_fn: PPOLoss = field(default_factory=PPOLoss)
    update: RLUpdateConfig = field(default_factory=lambda: RLUpdateConfig(minibatches=4))
    seed: int = 0
    """Seed of the minibatch shuffle (the recipe derives it from the run's --seed)."""
    name: str = "ppo"

    def trainable(self, learner: Learner) -> list[nn.Module]:
        if learner.critic is None:
            raise ValueError("PPO needs a critic (Learner(critic=MiniMindScoreModel(...)))")
        return [learner.model, learner.critic]

    def plan(self, learner: Learner, batch: RolloutBatch) -> StepPlan:
        if learner.ref_model is None and self.loss_fn.kl.needs_reference:
            raise ValueError(f"PPO with kl coef={self.loss_fn.kl.coef} needs a frozen reference model for its KL reward")
        exp, stats = self.experience(learner, batch)
        with torch.no_grad():
            exp.old_values = by_micro_batch(learner, exp, lambda c: critic_values(learner.critic, c.seq, c.attn,
                                                                                  c.response_len))
        all_sum = learner.comm.all_sum if learner.comm.distributed else None   # whitening over every rank's rows
        exp.adv, exp.returns = self.loss_fn.compute_advantages(
            batch.rewards.to(learner.device), exp.old_logp, exp.ref_logp, exp.old_values, exp.mask, all_sum=all_sum)
        stats = self.batch_stats(batch, stats)
        if len(batch) and exp.ref_logp is not None:
            stats["kl"] = float(masked_mean(exp.old_logp - exp.ref_logp, exp.mask))
        return StepPlan(self.minibatches(learner, exp), stats)

    def loss(self, learner: Learner, m: Micro):
        logp, old, w, extra = self.policy_forward(learner, m)
        e = m.exp
        values = critic_values(learner.critic, e.seq, e.attn, e.response_len)
        loss, stats = self.loss_fn(logp, old, values, e.old_values, e.adv, e.returns, e.mask, **m.counts, weights=w)
        return loss, {**self.per_token(stats, m), **extra}
