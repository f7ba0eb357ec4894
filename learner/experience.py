"""The learner's typed view of one scored rollout batch, and of the slices one update trains on.

B = rows (sequences), P+R = prompt then response length, R = response length. Everything is on the
learner's device. Built once per batch by an RL stage (old/reference logprobs, advantages over the
FULL batch), then sliced into minibatches and micro-batches without changing any value.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Experience:
    seq: torch.Tensor                      # [B, P+R] int64 prompt (left-padded) then response tokens
    attn: torch.Tensor                     # [B, P+R] 1 on real tokens
    mask: torch.Tensor                     # [B, R] float32, 1 on response tokens that carry loss
    rollout_logp: torch.Tensor             # [B, R] logprobs of the distribution the engine sampled from
    temperature: float                     # the sampling temperature: logprobs are computed under it
    old_logp: torch.Tensor | None = None   # [B, R] the ratio's denominator; None = the update's own
                                           #   logprobs, detached (one update from the sampling weights)
    ref_logp: torch.Tensor | None = None   # [B, R] frozen reference policy
    adv: torch.Tensor | None = None        # [B] sequence or [B, R] token advantages
    returns: torch.Tensor | None = None    # [B, R] PPO value targets
    old_values: torch.Tensor | None = None # [B, R] PPO critic values at sampling
    row_id: torch.Tensor | None = None     # [B] int64 place of each row in the step's whole batch (over
                                           #   every learner rank): orders the minibatch shuffle

    def __len__(self) -> int:
        return self.seq.shape[0]

    @property
    def response_len(self) -> int:
        return self.mask.shape[1]

    @property
    def response_lengths(self) -> torch.Tensor:
        """[B] real response tokens of each row: in a multi-turn episode the model's turns AND the
        observations between them (what the episode budget counts), not the loss mask's tokens."""
        return self.attn[:, -self.response_len:].sum(-1)

    @property
    def response_ids(self) -> torch.Tensor:
        """[B, R] the sampled tokens."""
        return self.seq[:, -self.response_len:]

    def select(self, idx: torch.Tensor) -> "Experience":
        """Rows `idx` of every per-row tensor."""
        rows = {f.name: getattr(self, f.name).index_select(0, idx.to(getattr(self, f.name).device)) for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **rows)

    def chunks(self, size: int) -> list["Experience"]:
        """Consecutive slices of `size` rows (one slice when size <= 0 or >= B)."""
        n = len(self)
        if size <= 0 or size >= n:
            return [self]
        idx = torch.arange(n, device=self.seq.device)
        return [self.select(i) for i in idx.split(size)]


@dataclass
class Micro:
    """One forward/backward of an update: rows of an Experience plus the counts of the WHOLE
    minibatch, so that losses normalised by them sum over micro-batches to the minibatch loss."""
    exp: Experience
    global_tokens: float    # loss-carrying tokens in the minibatch
    global_seqs: int        # rows in the minibatch
    max_len: int            # padded response length (constant normaliser of seq-mean-token-sum-norm)

    @property
    def tokens(self) -> float:
        """This micro-batch's loss-carrying tokens: the weight of its stats in the step's reduction."""
        return float(self.exp.mask.sum())

    @property
    def counts(self) -> dict[str, float | int]:
        return {"global_tokens": self.global_tokens, "global_seqs": self.global_seqs, "max_len": self.max_len}
