"""A model's view of the batch's response tokens, as the learner computes it (learner.stages.logprobs):
logits at the positions that predicted each response token, log-probabilities under a temperature,
in chunks of rows (the micro-batch size changes the rounding, which the mismatch report measures), and
the exact KL between two models' next-token distributions at those positions."""
from __future__ import annotations

from typing import Iterator

import torch

from contract.batch import RolloutBatch
from learner.losses import logprobs_from_logits
from learner.stages import response_logits


@torch.no_grad()
def chunked_logits(model: torch.nn.Module, batch: RolloutBatch, chunk: int = 0) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, [rows, R, V] fp32 logits at temperature 1) for consecutive chunks of `chunk` rows (0: all)."""
    was = model.training
    model.eval()
    seq, attn, R = batch.sequences, batch.attention_mask, batch.response_ids.shape[1]
    size = chunk if chunk > 0 else len(batch)
    for s in range(0, len(batch), size):
        rows = slice(s, min(s + size, len(batch)))
        logits, wanted = response_logits(model, seq[rows], attn[rows], R, 1.0)
        yield rows, wanted.unpack(logits)
    model.train(was)


def batch_logprobs(model: torch.nn.Module, batch: RolloutBatch, chunk: int = 0,
                   temperature: float | None = None) -> torch.Tensor:
    """[B, R] log-probabilities of the response tokens at `temperature` (default: the batch's own)."""
    t = batch.temperature if temperature is None else temperature
    out = torch.zeros_like(batch.logprobs)
    for rows, logits in chunked_logits(model, batch, chunk):
        out[rows] = logprobs_from_logits(logits / t if t != 1.0 else logits, batch.response_ids[rows])
    return out


def batch_log_softmax(model: torch.nn.Module, batch: RolloutBatch, chunk: int = 0) -> torch.Tensor:
    """[B, R, V] the whole next-token distribution (log) at each response position, at the batch's temperature."""
    t = batch.temperature
    parts = [torch.log_softmax(z / t if t != 1.0 else z, -1) for _, z in chunked_logits(model, batch, chunk)]
    return torch.cat(parts)


def token_kl(log_p: torch.Tensor, log_ref: torch.Tensor) -> torch.Tensor:
    """[..., R] exact KL(p || ref) = sum_v p (log p - log ref) of each position's next-token distributions: over
    the whole vocabulary, so it needs no sample of p (the batch's tokens were sampled by another policy)."""
    return (log_p.exp() * (log_p - log_ref)).sum(-1)
