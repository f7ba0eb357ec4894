"""RL stages: GRPO, PPO, SPO. Each turns one scored `RolloutBatch` into experience (old and
reference logprobs recomputed by the learner, advantages on the FULL batch) and then yields
epochs x minibatches optimizer updates, so the PPO ratio really moves away from 1 and the
clipping matters.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from minimind.model import MiniMindForCausalLM
from rollout.batch import RolloutBatch

from .learner import Learner, split_rows
from .losses import (GRPOLoss, PPOLoss, SPOTracker, entropy_from_logits, logprobs_from_logits,
                     masked_mean, spo_advantages, zero_variance_groups)
from .stages import _Base


def response_logits(model: MiniMindForCausalLM, seq: torch.Tensor, attn: torch.Tensor, R: int,
                    temperature: float) -> torch.Tensor:
    """[B, R, V] logits that predicted each response token, at the sampling temperature. Only the R
    positions before each response token go through the LM head (the prompt's logits are never needed)."""
    logits = model(seq, attention_mask=attn, logits_slice=slice(-R - 1, -1)).logits.float()
    return logits / temperature if temperature not in (0.0, 1.0) else logits


def response_logprobs(model, seq, attn, R, temperature) -> torch.Tensor:
    return logprobs_from_logits(response_logits(model, seq, attn, R, temperature), seq[:, -R:])


class _SelectiveLogSoftmax(torch.autograd.Function):
    """(log softmax(logits)[tokens], logsumexp(logits)) for fp32 logits [B, R, V].

    Same forward as `logprobs_from_logits` (gather − logsumexp). The backward writes
    g·(onehot − softmax) into ONE [B, R, V] buffer (exp, scale and scatter in place) where autograd's
    gather − logsumexp builds a zero-filled scatter buffer and a softmax buffer and adds them: the
    same values (each element is the same two-operand sum), ~20% less time per RL update on CPU.
    The logsumexp output is not differentiable (it feeds the entropy statistic)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor):
        idx = tokens.long().unsqueeze(-1)
        lse = torch.logsumexp(logits, dim=-1)
        logp = torch.gather(logits, -1, idx).squeeze(-1) - lse
        ctx.save_for_backward(logits, lse, idx)
        ctx.mark_non_differentiable(lse)
        return logp, lse

    @staticmethod
    def backward(ctx, g: torch.Tensor, _g_lse: torch.Tensor | None):
        logits, lse, idx = ctx.saved_tensors
        grad = (logits - lse.unsqueeze(-1)).exp_()        # softmax
        grad.mul_(-g.unsqueeze(-1))                        # the logsumexp branch: −g·softmax
        grad.scatter_add_(-1, idx, g.unsqueeze(-1))        # the gather branch: +g at the token
        return grad, None


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable log p(tokens) [B, R] and the (detached) entropy [B, R] of fp32 logits, sharing
    one logsumexp. Entropy H = lse − Σ softmax·z (as `entropy_from_logits`)."""
    if logits.dtype != torch.float32:
        logp = logprobs_from_logits(logits, tokens)
        with torch.no_grad():
            return logp, entropy_from_logits(logits)
    logp, lse = _SelectiveLogSoftmax.apply(logits, tokens)
    with torch.no_grad():
        z = logits.detach()
        p = (z - lse.unsqueeze(-1)).exp_()
        ent = lse - p.mul_(z).sum(dim=-1)
    return logp, ent


@dataclass
class RLUpdateConfig:
    epochs: int = 1
    """Passes over each rollout batch."""
    minibatches: int = 2
    """Optimizer updates per epoch (the batch is shuffled and split)."""
    temperature: float = 1.0
    """Sampling temperature of the rollout: logprobs are recomputed at this temperature."""
    use_rollout_logprobs: bool = False
    """Take the engine's logprobs as the old policy instead of recomputing (e.g. a bf16 engine)."""
    seed: int = 0
    """Seed of the minibatch shuffling."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError(f"RLUpdateConfig: epochs={self.epochs} and minibatches={self.minibatches} must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"RLUpdateConfig.temperature={self.temperature}: RL needs a sampling temperature > 0")


class _RLBase(_Base):
    max_sane_lr = 1e-4
    update: RLUpdateConfig

    def _experience(self, learner: Learner, batch: RolloutBatch, old_from_update: bool = False) -> dict:
        """seq/attn/mask, the rollout's logprobs, the reference's, and `old`: the logprobs the ratio
        divides by. `old_from_update`: the batch gets ONE update from the weights that sampled it,
        so the old policy is the policy being updated; `old` is None and the loss takes the update's
        own logprobs, detached (one no-grad forward less: learner step ~3.2 -> ~2.7 s, demo 256 x 24)."""
        dev = learner.device
        seq, attn = batch.sequences.to(dev), batch.attention_mask.to(dev)
        mask = batch.response_mask.to(dev)
        R = batch.response_ids.shape[1]
        exp = {"seq": seq, "attn": attn, "mask": mask, "rollout_logp": batch.logprobs.to(dev), "stats": {}}
        stale = batch.meta.get("stale", False)
        # stale: the weights moved since sampling, a recomputation would measure nothing
        recompute = not (old_from_update or stale)
        with torch.no_grad(), learner.autocast():
            if recompute:
                learner.model.eval()  # no dropout: old logprobs must be those the rollout sampled from
                old = response_logprobs(learner.model, seq, attn, R, self.update.temperature)
                learner.model.train()
                exp["stats"]["logprob_gap"] = float(((old - exp["rollout_logp"]).abs() * mask).max())
            t_ref = time.perf_counter()
            if learner.ref_model is not None:
                exp["ref"] = response_logprobs(learner.ref_model, seq, attn, R, self.update.temperature)
            exp["stats"]["reference_seconds"] = time.perf_counter() - t_ref
        if self.update.use_rollout_logprobs or stale:
            exp["old"] = exp["rollout_logp"]
        else:
            exp["old"] = old if recompute else None
        return exp

    def _minibatches(self, learner: Learner, exp: dict, keys: list[str]) -> Iterator[list[dict]]:
        rows = exp["seq"].shape[0]
        R = exp["mask"].shape[1]
        gen = torch.Generator().manual_seed(self.update.seed * 1_000_003 + learner.step)
        n_mb = min(self.update.minibatches, rows)
        for _ in range(self.update.epochs):
            perm = torch.randperm(rows, generator=gen).to(exp["seq"].device)
            for idx in perm.chunk(n_mb):
                mb = {k: exp[k].index_select(0, idx) for k in keys}
                counts = dict(global_tokens=float(mb["mask"].sum()), global_seqs=len(idx), max_len=R)
                micros = split_rows({**mb, **counts}, learner.optim_cfg.micro_batch_size)
                for m in micros:
                    m["weight"] = m["seq"].shape[0] / len(idx)
                yield micros

    def _policy_forward(self, learner: Learner, m: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(logp with grad, old logp, stats). Without an "old" entry (`old_from_update`) the old
        logprobs are these, detached, and the engine-vs-learner gap is measured on them."""
        R = m["mask"].shape[1]
        logits = response_logits(learner.model, m["seq"], m["attn"], R, self.update.temperature)
        logp, ent = logprobs_and_entropy(logits, m["seq"][:, -R:])
        if "old" in m:
            old = m["old"]
        else:
            old = logp.detach()
            gap = float(((old - m["rollout_logp"]).abs() * m["mask"]).max())
            learner.last_stats["logprob_gap"] = max(gap, learner.last_stats.get("logprob_gap", 0.0))
        return logp, old, {"entropy": float(masked_mean(ent, m["mask"]))}

    @staticmethod
    def _counts(m: dict) -> dict:
        return {k: m[k] for k in ("global_tokens", "global_seqs", "max_len")}

    @staticmethod
    def _stats(stats: dict, extra: dict, m: dict) -> dict:
        """pg_loss / vf_loss of a micro-batch are its SHARE of the minibatch loss (normalised by the
        minibatch counts), while the learner averages stats with the micro's row weight: divide
        them by that weight so the weighted sum is the minibatch value with or without micro-batching."""
        w = m.get("weight", 1.0)
        out = {k: (v / w if k in ("pg_loss", "vf_loss") and w > 0 else v) for k, v in stats.items()}
        return {**out, **extra}

    @staticmethod
    def _batch_stats(batch: RolloutBatch, exp: dict) -> dict:
        mask = batch.response_mask
        return {**exp["stats"], "reward_mean": float(batch.rewards.mean()),
                "response_length": float(mask.sum(1).mean()), "rows": float(len(batch))}


@dataclass
class GRPOStage(_RLBase):
    """Group-normalised advantages; optional zero-variance-group filtering with refill: groups
    whose G rewards are all equal carry no signal, so they are dropped and kept batches are
    buffered until `target_groups` informative groups are available (`learner.need_more` tells
    the driver to roll out more prompts for the same step)."""
    loss_fn: GRPOLoss = field(default_factory=GRPOLoss)
    update: RLUpdateConfig = field(default_factory=RLUpdateConfig)
    filter_zero_variance: bool = False
    target_groups: int = 0
    """With filtering: informative groups to collect before updating (0 = the incoming batch's)."""
    max_refills: int = 2
    """With filtering: extra rollout rounds per step before training on what was collected."""
    name: str = "grpo"
    _pending: list = field(default_factory=list, repr=False)
    _refills: int = 0

    def _filter(self, learner: Learner, batch: RolloutBatch) -> RolloutBatch | None:
        groups_in = len(torch.unique(batch.group_uid))
        keep = (~zero_variance_groups(batch.rewards, batch.group_uid)).nonzero().squeeze(-1)
        if len(keep):
            self._pending.append(batch.select(keep))
        target = self.target_groups or groups_in
        have = sum(len(torch.unique(b.group_uid)) for b in self._pending)
        if have < target and self._refills < self.max_refills:
            self._refills += 1
            learner.need_more = True
            return None
        self._refills = 0
        learner.need_more = False
        if not self._pending:
            return None
        merged = RolloutBatch.concat(self._pending)
        self._pending = []
        return merged

    def updates(self, learner: Learner, batch: RolloutBatch) -> Iterator[list[dict]]:
        learner.need_more = False
        full = batch
        if self.filter_zero_variance:
            batch = self._filter(learner, batch)
            if batch is None:
                learner.last_stats = {"reward_mean": float(full.rewards.mean()), "skipped_groups": 1.0}
                return
        one_update = self.update.epochs * self.update.minibatches == 1
        exp = self._experience(learner, batch, old_from_update=one_update and not self.loss_fn.kl_in_advantages)
        uid = batch.group_uid.to(learner.device)
        rewards = batch.rewards.to(learner.device)
        exp["adv"] = self.loss_fn.compute_advantages(rewards, uid, exp["old"], exp.get("ref"), exp["mask"])
        learner.last_stats = self._batch_stats(batch, exp)
        learner.last_stats["zero_var_frac"] = float(zero_variance_groups(rewards, uid).float().mean())
        keys = ["seq", "attn", "mask", "adv"] + (["ref"] if "ref" in exp else [])
        keys += ["old"] if exp["old"] is not None else ["rollout_logp"]
        yield from self._minibatches(learner, exp, keys)

    def loss(self, learner: Learner, m: dict):
        logp, old, extra = self._policy_forward(learner, m)
        loss, stats = self.loss_fn(logp, old, m.get("ref"), m["adv"], m["mask"], **self._counts(m))
        return loss, self._stats(stats, extra, m)


@dataclass
class PPOStage(_RLBase):
    """Critic (`learner.critic`, a MiniMindScoreModel) + GAE; the KL is in the per-token reward.
    The value of the state before response token t is read at position P-1+t."""
    loss_fn: PPOLoss = field(default_factory=PPOLoss)
    update: RLUpdateConfig = field(default_factory=RLUpdateConfig)
    name: str = "ppo"

    def trainable(self, learner: Learner) -> list[nn.Module]:
        if learner.critic is None:
            raise ValueError("PPO needs a critic (Learner(critic=MiniMindScoreModel(...)))")
        return [learner.model, learner.critic]

    @staticmethod
    def _values(critic: nn.Module, seq: torch.Tensor, attn: torch.Tensor, R: int) -> torch.Tensor:
        return critic(seq, attention_mask=attn)[:, -R - 1:-1]

    def updates(self, learner: Learner, batch: RolloutBatch) -> Iterator[list[dict]]:
        if learner.ref_model is None:
            raise ValueError("PPO needs a frozen reference model for its KL reward")
        exp = self._experience(learner, batch)
        R = exp["mask"].shape[1]
        with torch.no_grad():
            exp["old_values"] = self._values(learner.critic, exp["seq"], exp["attn"], R)
        exp["adv"], exp["ret"] = self.loss_fn.compute_advantages(
            batch.rewards.to(learner.device), exp["old"], exp["ref"], exp["old_values"], exp["mask"])
        learner.last_stats = self._batch_stats(batch, exp)
        learner.last_stats["kl"] = float(masked_mean(exp["old"] - exp["ref"], exp["mask"]))
        yield from self._minibatches(learner, exp, ["seq", "attn", "mask", "old", "adv", "ret", "old_values"])

    def loss(self, learner: Learner, m: dict):
        logp, old, extra = self._policy_forward(learner, m)
        values = self._values(learner.critic, m["seq"], m["attn"], m["mask"].shape[1])
        loss, stats = self.loss_fn(logp, old, values, m["old_values"], m["adv"], m["ret"], m["mask"],
                                   **self._counts(m))
        return loss, self._stats(stats, extra, m)


@dataclass
class SPOStage(_RLBase):
    """Single-stream: one sample per prompt, baseline from a persistent per-prompt Beta tracker
    (read before its update), batch-normalised advantages; the tracker is checkpointed.
    Rewards are clipped to [0, 1] for the tracker (it models a success probability)."""
    loss_fn: GRPOLoss = field(default_factory=GRPOLoss)  # policy loss + KL; advantages come from SPO
    update: RLUpdateConfig = field(default_factory=RLUpdateConfig)
    tracker: SPOTracker = field(default_factory=SPOTracker)
    name: str = "spo"

    def init_tracker(self, rewards_by_key: dict[str, list[float]]) -> int:
        """Offline initialisation from a few samples per prompt (rewards clipped to [0, 1])."""
        for key, rewards in rewards_by_key.items():
            self.tracker.init_from_samples(key, [min(max(r, 0.0), 1.0) for r in rewards])
        return len(rewards_by_key)

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "tracker" in state:
            self.tracker.load_state_dict(state["tracker"])

    def updates(self, learner: Learner, batch: RolloutBatch) -> Iterator[list[dict]]:
        exp = self._experience(learner, batch)
        rewards = batch.rewards.float()
        keys = batch.prompt_keys
        baseline = self.tracker.baseline(keys)
        exp["adv"] = spo_advantages(rewards, baseline).to(learner.device)
        mean_logp = masked_mean(exp["old"], exp["mask"], dim=-1).cpu()
        drift = self.tracker.drift(keys, mean_logp)
        self.tracker.update(keys, rewards.clamp(0, 1), drift)
        learner.last_stats = self._batch_stats(batch, exp)
        learner.last_stats.update(baseline_mean=float(baseline.mean()), drift_mean=float(drift.mean()))
        names = ["seq", "attn", "mask", "old", "adv"] + (["ref"] if "ref" in exp else [])
        yield from self._minibatches(learner, exp, names)

    def loss(self, learner: Learner, m: dict):
        logp, old, extra = self._policy_forward(learner, m)
        loss, stats = self.loss_fn(logp, old, m.get("ref"), m["adv"], m["mask"], **self._counts(m))
        return loss, self._stats(stats, extra, m)
