"""What the RL stages (GRPO, PPO, SPO) share: turning one scored `RolloutBatch` into an `Experience`
(old and reference logprobs recomputed by the learner under the batch's own sampling temperature),
and slicing it into epochs x minibatches optimizer updates so the PPO ratio really moves away from 1
and the clipping matters."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from contract.batch import EPISODE_COUNTS, RolloutBatch
from contract.stats import maximum, total

from ..experience import Experience, Micro
from ..learner import Learner
from ..losses import masked_mean, mismatch_stats, tis_weights
from .logprobs import distinct_prompts, logprobs_and_entropy, response_logits, response_logprobs
from .supervised import StageBase


@dataclass
class RLUpdateConfig:
    epochs: int = 1
    """Passes over each rollout batch."""
    minibatches: int = 1
    """Optimizer updates per epoch (the batch is shuffled and split)."""
    use_rollout_logprobs: bool = False
    """Take the engine's logprobs as the old policy instead of recomputing them (e.g. a bf16 engine
    whose mismatch you accept); stale batches always use them."""
    tis_cap: float | None = None
    """Truncated importance sampling of the rollout/learner mismatch: each token's policy-gradient loss
    is weighted by min(pi_learner_old / pi_rollout, C) with this C >= 1. none: off, except with
    --rollout.quantize int8 where the recipe sets 2.0 (unless --update.use-rollout-logprobs, whose ratio
    already divides by the engine's policy); 0: off in every case. Stale (off-policy) batches train
    against the engine's logprobs, so their weights are 1."""
    tis_level: Literal["token", "sequence"] = "token"
    """TIS weight per token, or one per response (the product of its token ratios, then truncated)."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError(f"--update.epochs={self.epochs} and --update.minibatches={self.minibatches} "
                             f"must be >= 1")
        if self.tis_cap is not None and self.tis_cap != 0 and self.tis_cap < 1:
            raise ValueError(f"--update.tis-cap={self.tis_cap}: the truncation C must be >= 1 (a cap below 1 "
                             f"down-weights on-policy tokens), 0 (off) or none")
        if self.tis_cap and self.use_rollout_logprobs:
            raise ValueError(f"--update.tis-cap={self.tis_cap} with --update.use-rollout-logprobs: the old policy IS "
                             f"the rollout's, so the weights would all be 1; the ratio already corrects the mismatch "
                             f"there: drop one of the two")
        if self.tis_level not in ("token", "sequence"):
            raise ValueError(f"--update.tis-level={self.tis_level!r}: choose token or sequence")

    @property
    def single_update(self) -> bool:
        return self.epochs * self.minibatches == 1


def by_micro_batch(learner: Learner, exp: Experience, fn) -> torch.Tensor:
    """[B, R] `fn(rows)` of every micro-batch of the experience, joined: a no-grad pass over the batch
    holds one micro-batch's activations at a time. Rows stay in batch order (a group's samples
    together, so each micro-batch runs its prompts once). A learner rank with no rows gets zeros."""
    parts = [fn(c) for c in exp.chunks(learner.optim_cfg.micro_batch_size)] if len(exp) else []
    return torch.cat(parts) if parts else torch.zeros_like(exp.rollout_logp)


class RLStage(StageBase):
    """Experience building and minibatching; subclasses add advantages and their loss."""
    max_sane_lr = 5e-4   # the small demo policies train stably at 2e-4 (grpo_tools: +56 points)
    update: RLUpdateConfig
    seed: int

    def experience(self, learner: Learner, batch: RolloutBatch,
                   old_from_update: bool = False) -> tuple[Experience, dict[str, float]]:
        """The batch on the learner's device with its reference logprobs and `old_logp`: the
        logprobs the ratio divides by. `old_from_update`: the batch gets ONE update from the weights
        that sampled it, so the old policy is the policy being updated: `old_logp` stays None and the
        loss takes the update's own logprobs, detached (one no-grad forward less)."""
        if batch.temperature <= 0:
            raise ValueError(f"RL batch sampled at temperature {batch.temperature}: the learner can only "
                             f"train on sampled rollouts (temperature > 0)")
        dev = learner.device
        row_id = batch.row_id if batch.row_id is not None else torch.arange(len(batch))
        if learner.comm.distributed and (batch.row_id is None or len(torch.unique(row_id)) < len(row_id)):
            raise ValueError("learner ranks need every row's id in the step's batch, unique (RolloutBatch.row_id, "
                             "set by the rollout worker): got " + ("none" if batch.row_id is None else "repeats"))
        exp = Experience(seq=batch.sequences.to(dev), attn=batch.attention_mask.to(dev),
                         mask=batch.response_mask.to(dev), rollout_logp=batch.logprobs.to(dev),
                         temperature=batch.temperature, row_id=row_id.to(dev))
        stats: dict[str, float] = {}
        R = exp.response_len
        # stale: the weights moved since sampling, a recomputation would measure nothing
        stale = learner.is_stale(batch)
        recompute = not (old_from_update or stale)
        score = lambda model: by_micro_batch(  # noqa: E731
            learner, exp, lambda c: response_logprobs(model, c.seq, c.attn, R, exp.temperature))
        with torch.no_grad(), learner.autocast():
            if recompute:
                learner.model.eval()  # no dropout: old logprobs must be those the rollout sampled from
                old = score(learner.model)
                learner.model.train()
                if len(exp):
                    stats["logprob_gap"] = maximum(((old - exp.rollout_logp).abs() * exp.mask).max())
            if learner.ref_model is not None:
                t_ref = time.perf_counter()
                exp.ref_logp = score(learner.ref_model)
                stats["reference_seconds"] = maximum(time.perf_counter() - t_ref)
        if self.update.use_rollout_logprobs or stale:
            exp.old_logp = exp.rollout_logp
        elif recompute:
            exp.old_logp = old
        return exp, stats

    def minibatches(self, learner: Learner, exp: Experience) -> Iterator[list[Micro]]:
        """epochs x minibatches updates over shuffled rows; each a list of micro-batches that carry
        the minibatch's counts. The shuffle is seeded by the run seed and the learner's update count,
        so a resumed run shuffles as the uninterrupted one did. It permutes the step's WHOLE batch
        (every learner rank's rows, in row-id order): each rank trains its own rows of each minibatch,
        normalised by the minibatch's counts summed over ranks, so the ranks' gradients add up to one
        learner's."""
        comm = learner.comm
        pos, rows = comm.positions(exp.row_id)      # [B_local] place in the whole batch, its size
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + learner.step) % 2**63)
        n_mb = max(1, min(self.update.minibatches, rows))
        max_len = comm.max_int(exp.response_len)
        P = exp.seq.shape[1] - exp.response_len
        prompt_of = (distinct_prompts(exp.seq, exp.attn, P)[1].cpu() if len(exp) and P
                     else torch.zeros(len(exp), dtype=torch.long))   # lexicographic rank of each row's prompt
        for _ in range(self.update.epochs):
            perm = torch.randperm(rows, generator=gen)
            chunks = perm.chunk(n_mb)
            chunk_of = torch.empty(rows, dtype=torch.long)
            order = torch.empty(rows, dtype=torch.long)     # position of each row within the permutation
            order[perm] = torch.arange(rows)
            for c, idx in enumerate(chunks):
                chunk_of[idx] = c
            # this rank's rows of each minibatch, in permutation order (one learner's row order)
            mine = [torch.nonzero(chunk_of[pos] == c).squeeze(-1) for c in range(len(chunks))]
            mine = [m[torch.argsort(order[pos[m]])] for m in mine]
            # then rows of one prompt together (a stable sort, so every rank's order is still the restriction
            # of one learner's): a micro-batch runs each of its prompts through the model once
            mine = [m[torch.argsort(prompt_of[m], stable=True)] for m in mine]
            tokens = comm.all_sum(torch.tensor([float(exp.mask[m.to(exp.mask.device)].sum()) for m in mine],
                                               dtype=torch.float64))
            for c, m in enumerate(mine):
                counts = dict(global_tokens=float(tokens[c]), global_seqs=len(chunks[c]), max_len=max_len)
                mb = exp.select(m.to(exp.seq.device))
                yield [Micro(x, **counts) for x in mb.chunks(learner.optim_cfg.micro_batch_size)] if len(m) else []

    def loss(self, learner: Learner, m: Micro):
        """The policy loss on the experience's advantages (GRPO, SPO; PPO adds its critic)."""
        logp, old, w, extra = self.policy_forward(learner, m)
        e = m.exp
        loss, stats = self.loss_fn(logp, old, e.ref_logp, e.adv, e.mask, **m.counts, weights=w)
        return loss, {**self.per_token(stats, m), **extra}

    def policy_forward(self, learner: Learner, m: Micro
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
        """(logp with grad, old logp, TIS weights or None, stats). Without `old_logp` the old logprobs
        are these, detached, and the engine-vs-learner gap is measured on them. The mismatch between
        the old policy and the engine's logprobs is logged every step (mismatch_abs_mean/max,
        mismatch_kl); with --update.tis-cap the truncated weights min(exp(old - rollout), C) come
        back for the loss (with tis_truncated_frac and tis_weight_mean)."""
        e = m.exp
        logits, wanted = response_logits(learner.model, e.seq, e.attn, e.response_len, e.temperature)
        logp, ent = logprobs_and_entropy(logits, wanted.pack(e.response_ids))
        logp, ent = wanted.unpack(logp), wanted.unpack(ent)             # [B, R], 0 on padding
        stats = {"entropy": float(masked_mean(ent, e.mask))}
        if e.old_logp is not None:
            old = e.old_logp
        else:
            old = logp.detach()
            stats["logprob_gap"] = maximum(((old - e.rollout_logp).abs() * e.mask).max())
        weights = None
        if self.update.tis_cap:
            weights, tis = tis_weights(old, e.rollout_logp, e.mask, self.update.tis_cap, self.update.tis_level)
        else:
            tis = mismatch_stats(old, e.rollout_logp, e.mask)
        return logp, old, weights, {**stats, **tis}

    @staticmethod
    def per_token(stats: dict[str, float], m: Micro) -> dict[str, float]:
        """pg_loss / vf_loss of a micro-batch are its SHARE of the minibatch loss (normalised by the
        minibatch's counts); divided by its token share they reduce, token-weighted, to the minibatch
        value with or without micro-batching."""
        share = m.tokens / m.global_tokens if m.global_tokens > 0 else 1.0
        return {k: (v / share if k in ("pg_loss", "vf_loss", "loss") and share > 0 else v) for k, v in stats.items()}

    @staticmethod
    def batch_stats(batch: RolloutBatch, stats: dict[str, float]) -> dict[str, float]:
        """Row means of the batch this rank trains (the learner weights them by `rows` over ranks)."""
        if not len(batch):
            return {**stats, "rows": total(0)}
        mask = batch.response_mask
        out = {**stats, "reward_mean": float(batch.rewards.mean()),
               "response_length": float(mask.sum(1).mean()), "rows": total(len(batch))}
        if batch.multiturn:   # tool-use episodes: turns and calls per episode
            out.update({k: float(getattr(batch, k).float().mean()) for k in EPISODE_COUNTS})
        return out
