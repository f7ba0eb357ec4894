"""One micro-batch of one loss, as the stage computes it, with the per-token weight the loss puts on each
token: w_t = d loss / d logp_t. The loss reaches the policy's parameters only through the response
logprobs (PPO's value loss reaches only the critic), so the policy gradient is exactly
sum_t w_t * d logp_t / d theta: the logprobs' own backward with `w` as its incoming gradient. What `w`
shows is how much of the update each response and each token gets, in the loss's own units.

The call of each loss is that of its stage (learner.stages: RLStage.loss, PPOStage.loss); the lab's
tests check that the gradient made here equals the one `Learner.train_step` makes, loss by loss."""
from __future__ import annotations

from dataclasses import dataclass
import torch

from learner.experience import Micro
from learner.learner import Learner
from learner.losses import tis_weights
from learner.stages import PPOStage, RLStage, logprobs_and_entropy, response_logits
from learner.stages.ppo import critic_values


@dataclass
class Terms:
    loss: torch.Tensor            # the micro-batch's share of the update's loss (detached)
    stats: dict[str, float]       # the loss module's own statistics
    logp: torch.Tensor            # [b, R] the policy's logprobs (detached)
    old: torch.Tensor             # [b, R] the ratio's denominator
    weights: torch.Tensor         # [b, R] d loss / d logp per token
    graph: torch.Tensor           # [b, R] the logprobs with their graph to the parameters
    logits: torch.Tensor          # [b, R, V] at the sampling temperature (detached)


def _policy_loss_call(stage: RLStage, learner: Learner, m: Micro, logp, old, w):
    e = m.exp
    return stage.loss_fn(logp, old, e.ref_logp, e.adv, e.mask, **m.counts, weights=w)


def _ppo_loss_call(stage: RLStage, learner: Learner, m: Micro, logp, old, w):
    e = m.exp
    values = critic_values(learner.critic, e.seq, e.attn, e.response_len)
    return stage.loss_fn(logp, old, values, e.old_values, e.adv, e.returns, e.mask, **m.counts, weights=w)


def micro_terms(stage: RLStage, learner: Learner, m: Micro) -> Terms:
    """Forward of micro-batch `m` under `learner`'s policy, the stage's loss on it, and d loss / d logp."""
    e = m.exp
    logits, wanted = response_logits(learner.model, e.seq, e.attn, e.response_len, e.temperature)
    graph = wanted.unpack(logprobs_and_entropy(logits, wanted.pack(e.response_ids))[0])
    logits = wanted.unpack(logits)
    logp = graph.detach().requires_grad_()
    old = e.old_logp if e.old_logp is not None else logp.detach()
    w = None
    if stage.update.tis_cap:
        w = tis_weights(old, e.rollout_logp, e.mask, stage.update.tis_cap, stage.update.tis_level)[0]
    call = _ppo_loss_call if isinstance(stage, PPOStage) else _policy_loss_call
    loss, stats = call(stage, learner, m, logp, old, w)
    (weights,) = torch.autograd.grad(loss, logp)
    return Terms(loss.detach(), stats, logp.detach(), old, weights, graph, logits.detach())


def backward(terms: Terms) -> None:
    """Add this micro-batch's policy gradient to the parameters' .grad."""
    terms.graph.backward(terms.weights)

