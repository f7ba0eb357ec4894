"""Pretrain, SFT and DPO datasets: tokenised once through the tokenizer's chat template, cached as Arrow.

Label convention (same as HF and `minimind.model`): `labels` are aligned with `input_ids` and the
model shifts them inside; IGNORE_INDEX (-100) means "no loss on this token".
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from minimind.data.cache import IGNORE_INDEX, PAD_ID, _Ragged, _report_meta, _single, _warn_on_hit, load_or_build
from minimind.data.collate import collate_dpo, collate_lm
from minimind.data.readers import chat_tools, read_conversations, read_dpo, read_pretrain
from minimind.tokenizer import MiniMindTokenizer

logger = logging.getLogger(__name__)


class PretrainDataset:
    """Pretraining blocks of seq_len tokens, in one of two layouts:

    packed (default): documents joined as `doc <|im_end|> doc <|im_end|> ...` and cut into seq_len
        blocks; no compute wasted on padding, only the final partial block is padded.
    per_line=True (MiniMind's layout): one block per line, `[bos] + text + [eos]` cut to seq_len,
        padded (pad 0, labels -100), as MiniMind's own PretrainDataset builds them.
    A line longer than `max_chars_per_line` characters is cut before tokenizing (default: per line,
    `tokenizer.chars_for_tokens(seq_len)`, which leaves a block's tokens as they are; 1M characters when
    packing).
    """

    def __init__(self, source: str | Path, tokenizer: MiniMindTokenizer, seq_len: int = 512,
                 cache_dir: str | Path | None = None, strict: bool = False, per_line: bool = False,
                 report_path: str | Path | None = None, max_chars_per_line: int | None = None):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.seq_len, self.per_line = seq_len, per_line
        max_chars = max_chars_per_line or (tokenizer.chars_for_tokens(seq_len) if per_line else 1_000_000)

        def build_lines() -> tuple[pa.Table, dict]:
            res = read_pretrain(source, strict=strict, report_path=report_path, max_chars=max_chars)
            docs = tokenizer.encode_batch(res.records)
            rows = [[tokenizer.bos_id] + d[: seq_len - 2] + [tokenizer.eos_id] for d in docs]
            return (pa.table({"ids": pa.array(rows, pa.list_(pa.int32()))}),
                    {"read": _report_meta(res.report), "n_docs": len(docs)})

        def build() -> tuple[pa.Table, dict]:
            res = read_pretrain(source, strict=strict, report_path=report_path, max_chars=max_chars)
            eos = tokenizer.eos_id
            docs = tokenizer.encode_batch(res.records)
            pieces = [np.asarray(d + [eos], dtype=np.int32) for d in docs]
            stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
            return pa.table({"ids": stream}), {"read": _report_meta(res.report),
                                               "n_docs": len(docs)}

        settings = {"kind": "lines", "seq_len": seq_len, "max_chars": max_chars} if per_line else {
            "kind": "stream", "max_chars": max_chars}
        self.cache = load_or_build(source, tokenizer, "pretrain", settings, cache_dir,
                                   build_lines if per_line else build)
        _warn_on_hit(self.cache, source)
        if per_line:
            self._lines = _Ragged(self.cache.table.column("ids"))
        else:
            self.stream: np.ndarray = _single(self.cache.table.column("ids")).to_numpy()

    def __len__(self) -> int:
        return len(self._lines) if self.per_line else math.ceil(len(self.stream) / self.seq_len)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.per_line:
            block = self._lines[i].astype(np.int64)
        else:
            block = self.stream[i * self.seq_len: (i + 1) * self.seq_len].astype(np.int64)
        labels = block.copy()
        if len(block) < self.seq_len:
            pad = self.seq_len - len(block)
            block = np.concatenate([block, np.full(pad, PAD_ID, np.int64)])
            labels = np.concatenate([labels, np.full(pad, IGNORE_INDEX, np.int64)])
        return {"input_ids": block, "labels": labels}

    @staticmethod
    def collate(items):  # noqa: D102 - BatchIterator picks this up
        return collate_lm(items)



def sft_example(tokenizer: MiniMindTokenizer, messages: Sequence[Mapping[str, Any]],
                max_len: int, label_turn_newline: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one conversation rendered by the tokenizer's template (tools taken
    from the system message, MiniMind-3 style): loss only on assistant turns and their `<|im_end|>`
    (+ the `\n` after it with label_turn_newline, MiniMind's labelling), right-truncated to max_len."""
    msgs, tools = chat_tools(list(messages))
    ids, mask = tokenizer.encode_chat_masked(msgs, tools=tools, label_turn_newline=label_turn_newline,
                                             max_tokens=max_len)
    return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]


class SFTDataset:
    """Chat conversations with an assistant-only loss mask.

    label_turn_newline=True labels the `\n` after each assistant `<|im_end|>` too, as MiniMind's own
    SFT does: use it when fine-tuning a MiniMind checkpoint."""

    def __init__(self, source: str | Path, tokenizer: MiniMindTokenizer, max_len: int = 512,
                 cache_dir: str | Path | None = None, strict: bool = False, label_turn_newline: bool = False,
                 report_path: str | Path | None = None):
        self.max_len = max_len

        def build() -> tuple[pa.Table, dict]:
            res = read_conversations(source, strict=strict, report_path=report_path)
            all_ids, all_labels, n_empty = [], [], 0
            for msgs in res.records:
                ids, labels = sft_example(tokenizer, msgs, max_len, label_turn_newline)
                if all(l == IGNORE_INDEX for l in labels):
                    n_empty += 1  # truncation removed every assistant token: nothing to learn
                    continue
                all_ids.append(ids)
                all_labels.append(labels)
            if n_empty:
                logger.warning("%s: %d conversation(s) dropped: no assistant token within "
                               "max_len=%d", source, n_empty, max_len)
            table = pa.table({"input_ids": pa.array(all_ids, pa.list_(pa.int32())),
                              "labels": pa.array(all_labels, pa.list_(pa.int32()))})
            return table, {"read": _report_meta(res.report), "n_truncated_away": n_empty}

        self.cache = load_or_build(source, tokenizer, "sft",
                                   {"max_len": max_len, "label_turn_newline": label_turn_newline},
                                   cache_dir, build)
        _warn_on_hit(self.cache, source)
        self._ids = _Ragged(self.cache.table.column("input_ids"))
        self._labels = _Ragged(self.cache.table.column("labels"))

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return {"input_ids": self._ids[i].astype(np.int64),
                "labels": self._labels[i].astype(np.int64)}

    @staticmethod
    def collate(items):  # noqa: D102 - BatchIterator picks this up
        return collate_lm(items)



def dpo_side(tokenizer: MiniMindTokenizer, messages: Sequence[Mapping[str, Any]],
             max_len: int, label_turn_newline: bool = False) -> tuple[list[int], list[int]]:
    """(ids, response_mask): mask is 1 only on the final assistant turn and its `<|im_end|>`
    (+ `\n` with label_turn_newline); the prompt is every message before it."""
    msgs, tools = chat_tools(list(messages))
    ids, mask = tokenizer.encode_chat_masked(msgs, tools=tools, label_turn_newline=label_turn_newline,
                                             last_turn_only=True, max_tokens=max_len)
    return ids, mask


class DPODataset:
    """Chosen/rejected token ids with response-only masks (aligned with the ids)."""

    def __init__(self, source: str | Path, tokenizer: MiniMindTokenizer, max_len: int = 1024,
                 cache_dir: str | Path | None = None, strict: bool = False, label_turn_newline: bool = False,
                 report_path: str | Path | None = None):
        self.max_len = max_len

        def build() -> tuple[pa.Table, dict]:
            res = read_dpo(source, strict=strict, report_path=report_path)
            cols: dict[str, list] = {k: [] for k in
                                     ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")}
            n_empty = 0
            for pair in res.records:
                c_ids, c_mask = dpo_side(tokenizer, pair.chosen, max_len, label_turn_newline)
                r_ids, r_mask = dpo_side(tokenizer, pair.rejected, max_len, label_turn_newline)
                if not any(c_mask) or not any(r_mask):
                    n_empty += 1  # a response cut away entirely has no log-prob to compare
                    continue
                for k, v in zip(cols, (c_ids, c_mask, r_ids, r_mask)):
                    cols[k].append(v)
            if n_empty:
                logger.warning("%s: %d pair(s) dropped: response beyond max_len=%d",
                               source, n_empty, max_len)
            table = pa.table({
                "chosen_ids": pa.array(cols["chosen_ids"], pa.list_(pa.int32())),
                "chosen_mask": pa.array(cols["chosen_mask"], pa.list_(pa.int8())),
                "rejected_ids": pa.array(cols["rejected_ids"], pa.list_(pa.int32())),
                "rejected_mask": pa.array(cols["rejected_mask"], pa.list_(pa.int8())),
            })
            return table, {"read": _report_meta(res.report), "n_truncated_away": n_empty}

        self.cache = load_or_build(source, tokenizer, "dpo",
                                   {"max_len": max_len, "label_turn_newline": label_turn_newline},
                                   cache_dir, build)
        _warn_on_hit(self.cache, source)
        self._cols = {k: _Ragged(self.cache.table.column(k)) for k in self.cache.table.column_names}

    def __len__(self) -> int:
        return len(self._cols["chosen_ids"])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return {k: c[i].astype(np.int64) for k, c in self._cols.items()}

    @staticmethod
    def collate(items):  # noqa: D102 - BatchIterator picks this up
        return collate_dpo(items)


