"""The typed batch that flows rollout -> reward -> learner as a Ray object ref: the contract the
three sides share (a leaf module: it imports nothing of the project).

B = number of sequences = n_prompts * G (G completions per prompt, rows of one group are
adjacent), P = padded prompt length (prompts are LEFT-padded), R = padded response length
(responses are RIGHT-padded). All tensors live on CPU so they travel through the object store.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor            # [B, P] int64, left-padded with pad_id
    prompt_mask: torch.Tensor           # [B, P] int64, 1 on real prompt tokens
    response_ids: torch.Tensor          # [B, R] int64, right-padded with pad_id
    response_mask: torch.Tensor         # [B, R] float32, 1 on generated tokens incl. the stop token
    logprobs: torch.Tensor              # [B, R] float32, log p of each sampled token under the
                                        #        distribution actually sampled from (0 on padding)
    group_uid: torch.Tensor             # [B] int64, rows with the same uid answer the same prompt
    prompt_keys: list[str]              # [B] stable key of each prompt (SPO tracker, logging)
    answers: list[str]                  # [B] ground-truth answer of each row's prompt ("" if none)
    response_text: list[str]            # [B] decoded responses (special tokens stripped)
    temperature: float = 1.0            # sampling temperature of every row: the learner scores the
                                        #   tokens under this same distribution
    policy_version: int = 0             # the driver's serial of the weights the rollout sampled with (the
                                        #   learner compares it with what it last published: stale or not)
    rewards: torch.Tensor | None = None # [B] float32, filled by the reward actor
    correct: torch.Tensor | None = None # [B] float32, filled with rewards: each row's score from the
                                        #   verifier that defines accuracy (1 right, 0 wrong), whatever
                                        #   else the reward adds (evaluation slices, pass@k)
    reward_info: dict[str, Any] = field(default_factory=dict)  # per-component means, error counts
    meta: dict[str, Any] = field(default_factory=dict)         # timings, engine name, ...
    # multi-turn episodes (rollout.multiturn); None for single-turn batches. The response then holds
    # every token after the prompt: the model's turns AND the tool observations / template glue
    # between them. `response_mask` (the loss mask) is 1 only on the model's own tokens and
    # `logprobs` are 0 elsewhere; `response_attn` is what the model attends to.
    response_attn: torch.Tensor | None = None  # [B, R] int64, 1 on every real response token
    turns: torch.Tensor | None = None          # [B] int64, assistant turns of the episode
    tool_calls: torch.Tensor | None = None     # [B] int64, tool calls made (well-formed or not)
    tool_errors: torch.Tensor | None = None    # [B] int64, calls that failed (malformed, tool error, timeout)
    # where each row sits among the rows of a run: set by the producer (rollout call << 40, worker << 24,
    # row), kept through select/shard/concat, so row ids sort into one learner's row order whatever
    # learner rank holds the row; the minibatch shuffle permutes that order
    row_id: torch.Tensor | None = None         # [B] int64

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def sequences(self) -> torch.Tensor:
        """[B, P+R] prompt then response tokens, as the learner scores them."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """[B, P+R] 1 on real tokens (left pad and right pad are 0; tool observations are real)."""
        resp = self.response_mask if self.response_attn is None else self.response_attn
        return torch.cat([self.prompt_mask, resp.to(self.prompt_mask.dtype)], dim=1)

    @property
    def multiturn(self) -> bool:
        return self.response_attn is not None

    def with_rewards(self, rewards: torch.Tensor, info: dict[str, Any] | None = None,
                     correct: torch.Tensor | None = None) -> "RolloutBatch":
        return replace(self, rewards=rewards.float(), reward_info=dict(info or {}),
                       correct=None if correct is None else correct.float())

    def select(self, idx: torch.Tensor | list[int]) -> "RolloutBatch":
        """Rows `idx` (e.g. the groups that survive zero-variance filtering)."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        il = idx_t.tolist()
        pick = lambda xs: [xs[i] for i in il]  # noqa: E731
        return replace(
            self,
            prompt_ids=self.prompt_ids[idx_t], prompt_mask=self.prompt_mask[idx_t],
            response_ids=self.response_ids[idx_t], response_mask=self.response_mask[idx_t],
            logprobs=self.logprobs[idx_t], group_uid=self.group_uid[idx_t],
            prompt_keys=pick(self.prompt_keys), answers=pick(self.answers),
            response_text=pick(self.response_text),
            **{f: (None if getattr(self, f) is None else getattr(self, f)[idx_t]) for f in ROW_FIELDS},
        )

    def shard(self, n: int, offset: int = 0) -> list["RolloutBatch"]:
        """`n` parts of whole groups (one per learner rank), dealt round-robin: the k-th group (in order
        of first row) goes to part (k + offset) % n, so group counts differ by at most one, and over
        batches cut with offsets 0, 1, 2, ... (the step's batches) by at most one as well. A part may be
        empty. Each row's place in this batch is in `row_id`; batch-level `meta`/`reward_info` go with
        every part, `meta["batch_rows"]` saying how many rows they describe."""
        uids = list(dict.fromkeys(self.group_uid.tolist()))   # groups in order of first row
        part_of = {u: (k + offset) % n for k, u in enumerate(uids)}
        parts = []
        for r in range(n):
            idx = [i for i, u in enumerate(self.group_uid.tolist()) if part_of[u] == r]
            part = self.select(idx)
            row_id = part.row_id if part.row_id is not None else torch.tensor(idx, dtype=torch.long)
            parts.append(replace(part, row_id=row_id, meta={**self.meta, "batch_rows": len(self)}))
        return parts

    @staticmethod
    def concat(batches: list["RolloutBatch"], pad_id: int = 0) -> "RolloutBatch":
        """Join batches from several workers: prompts re-left-padded, responses re-right-padded."""
        P = max(b.prompt_ids.shape[1] for b in batches)
        R = max(b.response_ids.shape[1] for b in batches)

        def lpad(t: torch.Tensor, n: int, v: float) -> torch.Tensor:
            return torch.nn.functional.pad(t, (n - t.shape[1], 0), value=v)

        def rpad(t: torch.Tensor, n: int, v: float) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, n - t.shape[1]), value=v)

        cat = lambda f, pad, n, v: torch.cat([pad(getattr(b, f), n, v) for b in batches])  # noqa: E731
        scores = {f: torch.cat([getattr(b, f) for b in batches]) if all(getattr(b, f) is not None for b in batches)
                  else None for f in ("rewards", "correct")}
        kinds = {b.multiturn for b in batches}
        if len(kinds) > 1:
            raise ValueError("RolloutBatch.concat: multi-turn and single-turn batches cannot be joined "
                             "(use one rollout worker type per run)")
        episode: dict[str, Any] = {}
        if kinds == {True}:
            episode = {f: torch.cat([getattr(b, f) for b in batches]) for f in EPISODE_FIELDS[1:]}
            episode["response_attn"] = cat("response_attn", rpad, R, 0)
        row_id = None
        if all(b.row_id is not None for b in batches):
            row_id = torch.cat([b.row_id for b in batches])
        temps = {b.temperature for b in batches}
        if len(temps) > 1:
            raise ValueError(f"RolloutBatch.concat: rows sampled at different temperatures {sorted(temps)}")
        return RolloutBatch(
            prompt_ids=cat("prompt_ids", lpad, P, pad_id), prompt_mask=cat("prompt_mask", lpad, P, 0),
            response_ids=cat("response_ids", rpad, R, pad_id), response_mask=cat("response_mask", rpad, R, 0),
            logprobs=cat("logprobs", rpad, R, 0.0),
            group_uid=torch.cat([b.group_uid for b in batches]),
            prompt_keys=sum((b.prompt_keys for b in batches), []),
            answers=sum((b.answers for b in batches), []),
            response_text=sum((b.response_text for b in batches), []),
            temperature=temps.pop(),
            policy_version=min(b.policy_version for b in batches),
            **scores,
            reward_info=_merge_info([b.reward_info for b in batches], [len(b) for b in batches]),
            meta=_merge_info([b.meta for b in batches], [len(b) for b in batches]),
            row_id=row_id,
            **episode,
        )


EPISODE_COUNTS = ("turns", "tool_calls", "tool_errors")
"""Per-episode counts of multi-turn batches (the stats that report how episodes used their tools)."""

EPISODE_FIELDS = ("response_attn",) + EPISODE_COUNTS
"""The per-row fields of multi-turn episodes (None together on single-turn batches)."""

ROW_FIELDS = ("rewards", "correct", "row_id") + EPISODE_FIELDS
"""The optional [B, ...] tensors: None or one entry per row, kept row for row by select/shard."""


def _merge_info(infos: list[dict[str, Any]], rows: list[int]) -> dict[str, Any]:
    """Row-weighted means of the numeric entries present in every part (timings, reward means);
    other entries from the first part."""
    out = dict(infos[0]) if infos else {}
    total = sum(rows) or 1
    for key in out:
        vals = [i.get(key) for i in infos]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[key] = sum(v * n for v, n in zip(vals, rows)) / total
    return out
