"""One loss on the lab's batch: the stage plans k updates (epochs over the batch, the old policy and the
advantages fixed at the start), each a sum of micro-batch gradients, then AdamW with the learner's
clipping. The first update's loss, gradient and per-token weights are the side-by-side comparison (every
loss starts from the same weights); every update's clipping and KL show how each loss moves; the probe
after the last one shows where it got."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from learner.learner import Learner, StatReducer
from learner.losses import masked_sum
from learner.stages import RLStage
from recipes.lab.clipping import clip_counts
from recipes.lab.scoring import batch_log_softmax, token_kl
from recipes.lab.terms import backward, micro_terms

Probe = Callable[[torch.nn.Module], float]


@dataclass
class Trial:
    name: str
    loss: float = 0.0                      # the first update's loss (what the learner logs as `loss`)
    stats: dict[str, float] = field(default_factory=dict)   # the loss module's statistics, first update
    grad: torch.Tensor | None = None       # the first update's policy gradient, flat
    token_weights: torch.Tensor | None = None   # [B, R] d loss / d logp per token, batch row order
    advantages: torch.Tensor | None = None      # [B, R] the advantage each token's loss carries, batch row order
    updates: list[dict[str, float]] = field(default_factory=list)   # per update: loss, grad_norm, clip, kl
    kl_after: float = 0.0                  # KL(policy || reference) at the batch's positions after the k updates
    probe_after: float | None = None       # probe accuracy after the k updates

    @property
    def grad_norm(self) -> float:
        return float(self.grad.norm()) if self.grad is not None else 0.0


def policy_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in model.parameters() if p.requires_grad])


def batch_kl(model: torch.nn.Module, batch, ref_log_sm: torch.Tensor, chunk: int) -> float:
    """Mean exact KL(model || reference) of the next-token distributions at the batch's loss-carrying positions."""
    mask = batch.response_mask
    kl = token_kl(batch_log_softmax(model, batch, chunk), ref_log_sm)
    return float(masked_sum(kl, mask) / mask.sum().clamp(min=1))


def run_trial(name: str, stage: RLStage, learner: Learner, batch, ref_log_sm: torch.Tensor,
              probe: Probe | None = None) -> Trial:
    """Every update the stage plans for `batch` on `learner`; `ref_log_sm` [B, R, V] the reference's next-token
    log-distributions at the response positions (batch_log_softmax)."""
    trial = Trial(name)
    rows = batch.row_id.tolist() if batch.row_id is not None else list(range(len(batch)))
    place = {r: i for i, r in enumerate(rows)}
    plan = stage.plan(learner, batch)
    model, clip = learner.model, learner.optim_cfg.grad_clip
    for u, micros in enumerate(plan.updates):
        for g in learner.optimizer.param_groups:
            g["lr"] = learner.optim_cfg.lr_at(u)
        learner.optimizer.zero_grad(set_to_none=True)
        reducer, sides, total, kl, tokens = StatReducer(), {"low": 0.0, "high": 0.0, "dual": 0.0}, 0.0, 0.0, 0.0
        weights, adv = torch.zeros_like(batch.logprobs), torch.zeros_like(batch.logprobs)
        for m in micros:
            t = micro_terms(stage, learner, m)
            backward(t)
            e = m.exp
            total += float(t.loss)
            reducer.add(stage.per_token(t.stats, m), m.tokens)
            for side, n in clip_counts(stage.loss_fn, t.logp, t.old, e.adv, e.mask).items():
                sides[side] += n
            idx = [place[int(r)] for r in e.row_id]
            log_sm = torch.log_softmax(t.logits, -1)
            kl += float(masked_sum(token_kl(log_sm, ref_log_sm[idx].to(log_sm.device)), e.mask))
            tokens += m.tokens
            weights[idx] = t.weights.cpu()
            adv[idx] = (e.adv.unsqueeze(-1) if e.adv.dim() == 1 else e.adv).expand_as(t.logp).cpu()
        if u == 0:
            trial.loss, trial.stats = total, reducer.result()
            trial.grad, trial.token_weights, trial.advantages = policy_grad(model).clone(), weights, adv
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf))
        learner.optimizer.step()
        trial.updates.append({"loss": total, "grad_norm": norm, "kl_to_ref": kl / max(tokens, 1.0),
                              **{f"clip_{s}": n / max(tokens, 1.0) for s, n in sides.items()}})
    trial.kl_after = batch_kl(model, batch, ref_log_sm, learner.optim_cfg.micro_batch_size)
    if probe is not None:
        trial.probe_after = probe(model)
    return trial
