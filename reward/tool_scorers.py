"""Scorers of multi-turn tool-use episodes (batch scorers over the episode fields of a RolloutBatch;
0 for rows of single-turn batches). The answer itself is verified by MathVerifierScorer on the whole
episode text, whose last line is the final assistant turn.

- ToolFormatScorer: the share of the episode's tool calls that were well formed and ran
  ((ok - failed) / calls, in [-1, 1]; 0 without calls): a per-call format reward that cannot be
  farmed by calling more often.
- ExtraTurnPenalty: -(turns - 1), so with a positive weight each turn beyond the first costs.
"""
from __future__ import annotations

import torch

from contract.batch import RolloutBatch


class ToolFormatScorer:
    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        if batch.tool_calls is None:
            return torch.zeros(len(batch))
        calls = batch.tool_calls.float()
        bad = batch.tool_errors.float()
        return torch.where(calls > 0, (calls - 2 * bad) / calls.clamp(min=1), torch.zeros_like(calls))


class ExtraTurnPenalty:
    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        if batch.turns is None:
            return torch.zeros(len(batch))
        return -(batch.turns.float() - 1).clamp(min=0)
