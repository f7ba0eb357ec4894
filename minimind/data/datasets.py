"""Tokenised datasets for every stage, cached once as memory-mapped Arrow IPC files.

Label convention (same as HF and `minimind.model`): `labels` are aligned with
`input_ids` and the model shifts them inside; -100 means "no loss on this token".

Cache: `<cache_dir>/<kind>-<stem>-<key>.arrow`, where key hashes the source file's
path, mtime and size, the tokenizer's fingerprint and the dataset settings. Editing the
data, changing the tokenizer or a setting therefore rebuilds; anything else reuses the
file, memory-mapped (no copy, shared by processes on one machine).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from minimind.data.readers import (
    DPOPair,
    Message,
    ReadReport,
    _Bad,
    parse_conversation,
    parse_math,
    read_conversations,
    read_dpo,
    read_pretrain,
    read_records,
)
from minimind.tokenizer import MiniMindTokenizer, render_chat

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
PAD_ID = 0
CACHE_VERSION = 1  # bump when the on-disk layout or tokenisation logic changes


def default_cache_dir() -> Path:
    return Path(os.environ.get("MINIMIND_CACHE_DIR", "~/.cache/minimind-rl/data")).expanduser()


# ----- Arrow cache ------------------------------------------------------------------------

def cache_key(source: Path, tokenizer: MiniMindTokenizer, kind: str, settings: Mapping) -> str:
    st = source.stat()
    payload = {
        "v": CACHE_VERSION, "kind": kind, "path": str(source.resolve()),
        "mtime_ns": st.st_mtime_ns, "size": st.st_size,
        "tokenizer": tokenizer.fingerprint, "settings": dict(settings),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class CachedTable:
    table: pa.Table
    path: Path
    hit: bool  # True when an existing cache file was reused
    meta: dict[str, Any]  # build statistics stored alongside the data


def load_or_build(
    source: str | Path, tokenizer: MiniMindTokenizer, kind: str, settings: Mapping,
    cache_dir: str | Path | None, build: Callable[[], tuple[pa.Table, dict]],
) -> CachedTable:
    """Return the cached table for (source, tokenizer, settings), building it if needed."""
    src = Path(source)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: data file not found")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{kind}-{src.stem}-{cache_key(src, tokenizer, kind, settings)}.arrow"
    if path.is_file():
        try:
            table = _read_arrow(path)
            return CachedTable(table, path, True, _meta(table))
        except (pa.ArrowInvalid, OSError, ValueError) as e:  # torn/corrupt file: rebuild
            logger.warning("%s: unreadable cache file (%s); rebuilding", path, e)
    table, meta = build()
    table = table.replace_schema_metadata({"minimind": json.dumps(meta)}).combine_chunks()
    # write to a temp file then rename: a crash never leaves a half-written cache entry
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
    os.close(fd)
    try:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    table = _read_arrow(path)  # hand back the memory-mapped copy, same as on a hit
    return CachedTable(table, path, False, _meta(table))


def _read_arrow(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _meta(table: pa.Table) -> dict:
    raw = (table.schema.metadata or {}).get(b"minimind")
    return json.loads(raw) if raw else {}


def _single(col: pa.ChunkedArray) -> pa.Array:
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


class _Ragged:
    """Zero-copy view of an Arrow list<int> column: row i = values[offsets[i]:offsets[i+1]]."""

    def __init__(self, col: pa.ChunkedArray):
        arr = _single(col)
        self.offsets = arr.offsets.to_numpy()
        self.values = arr.values.to_numpy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]: self.offsets[i + 1]]


def _report_meta(report: ReadReport) -> dict:
    return {"n_ok": report.n_ok, "n_bad": report.n_bad, "issues": report.issues[:5]}


def _warn_on_hit(cached: CachedTable, source: str | Path) -> None:
    # The reader's warning was logged when the cache was built; repeat the summary so a
    # rerun that hits the cache does not hide bad lines.
    n_bad = cached.meta.get("read", {}).get("n_bad", 0)
    if cached.hit and n_bad:
        first = cached.meta["read"]["issues"][:3]
        logger.warning("%s: %d bad record(s) were skipped; first: %s", source, n_bad, first)


# ----- pretrain ---------------------------------------------------------------------------

class PretrainDataset:
    """Documents joined as `doc <|im_end|> doc <|im_end|> ...` and cut into seq_len blocks.

    Packing wastes no compute on padding; only the final partial block is padded (pad 0,
    labels -100) so that no text is dropped.
    """

    def __init__(self, source: str | Path, tokenizer: MiniMindTokenizer, seq_len: int = 512,
                 cache_dir: str | Path | None = None, strict: bool = False):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.seq_len = seq_len

        def build() -> tuple[pa.Table, dict]:
            res = read_pretrain(source, strict=strict)
            eos = tokenizer.eos_id
            docs = tokenizer.encode_batch(res.records)
            pieces = [np.asarray(d + [eos], dtype=np.int32) for d in docs]
            stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
            return pa.table({"ids": stream}), {"read": _report_meta(res.report),
                                               "n_docs": len(docs)}

        self.cache = load_or_build(source, tokenizer, "pretrain", {"kind": "stream"},
                                   cache_dir, build)
        _warn_on_hit(self.cache, source)
        self.stream: np.ndarray = _single(self.cache.table.column("ids")).to_numpy()

    def __len__(self) -> int:
        return math.ceil(len(self.stream) / self.seq_len)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(i)
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


# ----- SFT --------------------------------------------------------------------------------

def sft_example(tokenizer: MiniMindTokenizer, messages: Sequence[Mapping[str, str]],
                max_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one conversation: loss only on assistant content + its
    `<|im_end|>`, right-truncated to max_len."""
    ids, mask = tokenizer.encode_chat_masked(messages)
    ids, mask = ids[:max_len], mask[:max_len]
    return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]


class SFTDataset:
    """Chat conversations with an assistant-only loss mask."""

    def __init__(self, source: str | Path, tokenizer: MiniMindTokenizer, max_len: int = 512,
                 cache_dir: str | Path | None = None, strict: bool = False):
        self.max_len = max_len

        def build() -> tuple[pa.Table, dict]:
            res = read_conversations(source, strict=strict)
            all_ids, all_labels, n_empty = [], [], 0
            for msgs in res.records:
                ids, labels = sft_example(tokenizer, msgs, max_len)
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

        self.cache = load_or_build(source, tokenizer, "sft", {"max_len": max_len},
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


# ----- DPO --------------------------------------------------------------------------------

def dpo_side(tokenizer: MiniMindTokenizer, messages: Sequence[Mapping[str, str]],
             max_len: int) -> tuple[list[int], list[int]]:
    """(ids, response_mask): mask is 1 only on the final assistant message's content and
    its `<|im_end|>`; the prompt is every message before it."""
    ids, mask = tokenizer.encode_chat_masked(messages)
    n_prompt = len(tokenizer.encode_chat(messages[:-1]))  # exact prefix (piecewise encoding)
    mask = [0] * n_prompt + mask[n_prompt:]
    return ids[:max_len], mask[:max_len]


class DPODataset:
    """Chosen/rejected token ids with response-only masks (aligned with the ids)."""

    def __init__(self, source: str | Path, tokenizer: MiniMindTokenizer, max_len: int = 1024,
                 cache_dir: str | Path | None = None, strict: bool = False):
        self.max_len = max_len

        def build() -> tuple[pa.Table, dict]:
            res = read_dpo(source, strict=strict)
            cols: dict[str, list] = {k: [] for k in
                                     ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")}
            n_empty = 0
            for pair in res.records:
                c_ids, c_mask = dpo_side(tokenizer, pair.chosen, max_len)
                r_ids, r_mask = dpo_side(tokenizer, pair.rejected, max_len)
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

        self.cache = load_or_build(source, tokenizer, "dpo", {"max_len": max_len},
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


# ----- RL prompts -------------------------------------------------------------------------

@dataclass(frozen=True)
class RLPrompt:
    prompt: str  # chat-templated, ends with the generation prompt "<|im_start|>assistant\n"
    key: str  # stable id of the prompt text (sha256 prefix): same prompt, same key, any run
    answer: str  # reference answer ("" when the source has none)
    messages: tuple  # the prompt messages before templating


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _parse_rl(row: Any) -> tuple[list[Message], str]:
    """Math rows ({"prompt"|"question", "answer"}) or chat rows ({"conversations"}: the
    prompt is everything before the last assistant message, which is the answer)."""
    if isinstance(row, dict) and "conversations" in row:
        msgs = parse_conversation(row, require_assistant=False)
        if msgs[-1]["role"] == "assistant":
            if len(msgs) == 1:
                raise _Bad("conversation has no prompt before the assistant message")
            return msgs[:-1], msgs[-1]["content"]
        return msgs, ""
    rec = parse_math(row)
    return [{"role": "user", "content": rec.prompt}], rec.answer


class RLPromptDataset:
    """Prompts for rollouts: templated text, stable key and reference answer."""

    def __init__(self, source: str | Path | Sequence[Mapping], system_prompt: str | None = None,
                 strict: bool = False):
        if isinstance(source, (str, Path)):
            rows = read_records(source, _parse_rl, strict=strict).records
        else:  # in-memory records (e.g. synthetic_math.rl_records), validated the same way
            rows = _parse_in_memory(source, strict)
        self.items: list[RLPrompt] = []
        for msgs, answer in rows:
            if system_prompt and msgs[0]["role"] != "system":
                msgs = [{"role": "system", "content": system_prompt}, *msgs]
            text = render_chat(msgs, add_generation_prompt=True)
            self.items.append(RLPrompt(text, prompt_key(text), answer, tuple(msgs)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> RLPrompt:
        return self.items[i]

    def driver_prompts(self) -> list[dict]:
        """The prompts as the RL driver sends them to rollout workers: {"prompt", "key", "answer"}."""
        return [{"prompt": p.prompt, "key": p.key, "answer": p.answer} for p in self.items]

    @staticmethod
    def collate(items):  # noqa: D102 - BatchIterator picks this up
        return collate_rl(items)


def _parse_in_memory(records: Sequence[Mapping], strict: bool) -> list:
    from minimind.data.readers import DataError

    out, bad = [], []
    for i, r in enumerate(records):
        try:
            out.append(_parse_rl(dict(r) if isinstance(r, Mapping) else r))
        except _Bad as e:
            msg = f"<records>:{i}: {e}"
            if strict:
                raise DataError(msg) from None
            bad.append(msg)
    if bad:
        logger.warning("<records>: skipped %d bad record(s); first: %s", len(bad), bad[:3])
    return out


# ----- collate ----------------------------------------------------------------------------

def _pad(seqs: Sequence[np.ndarray], value: int, length: int | None = None) -> torch.Tensor:
    length = max((len(s) for s in seqs), default=0) if length is None else length
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
    return out


def collate_lm(items: Sequence[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Right-pad: input_ids with 0, labels with -100; attention_mask 1 on real tokens."""
    ids = [it["input_ids"] for it in items]
    return {
        "input_ids": _pad(ids, PAD_ID),                                 # [B, T]
        "labels": _pad([it["labels"] for it in items], IGNORE_INDEX),  # [B, T]
        "attention_mask": _pad([np.ones(len(s), np.int64) for s in ids], 0),  # [B, T]
    }


def collate_dpo(items: Sequence[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Chosen and rejected padded to one common length T so they can share a forward pass."""
    T = max(max(len(it["chosen_ids"]), len(it["rejected_ids"])) for it in items)
    out: dict[str, torch.Tensor] = {}
    for side in ("chosen", "rejected"):
        ids = [it[f"{side}_ids"] for it in items]
        out[f"{side}_ids"] = _pad(ids, PAD_ID, T)                        # [B, T]
        out[f"{side}_mask"] = _pad([it[f"{side}_mask"] for it in items], 0, T)  # [B, T]
        out[f"{side}_attention_mask"] = _pad([np.ones(len(s), np.int64) for s in ids], 0, T)
    return out


def collate_rl(items: Sequence[RLPrompt]) -> dict[str, list[str]]:
    return {"prompts": [it.prompt for it in items], "keys": [it.key for it in items],
            "answers": [it.answer for it in items]}


# ----- batching ---------------------------------------------------------------------------

class BatchIterator:
    """Seeded shuffling batches with an exactly resumable position.

    Epoch e visits `permutation(seed + e)`; `index` counts batches already handed out in
    the current epoch. After the last batch of an epoch the position rolls over to
    (e + 1, 0) immediately, so a checkpoint taken at an epoch boundary resumes with a full
    new epoch instead of an empty remainder.

    `for batch in it` runs the rest of the current epoch; `it.next_batch()` never ends.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0, drop_last: bool = False,
                 shuffle: bool = True, collate_fn: Callable | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.drop_last, self.shuffle = drop_last, shuffle
        self.collate_fn = collate_fn or getattr(dataset, "collate", None) or (lambda x: x)
        self.n = len(dataset)
        if len(self) == 0:
            raise ValueError(f"dataset of {self.n} item(s) gives no batch of {batch_size}"
                             f"{' with drop_last' if drop_last else ''}")
        self.epoch, self.index = 0, 0
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order = (np.random.default_rng(self.seed + self.epoch).permutation(self.n)
                           if self.shuffle else np.arange(self.n))
            self._order_epoch = self.epoch
        return self._order

    def next_indices(self) -> list[int]:
        order = self._epoch_order()
        start = self.index * self.batch_size
        idx = order[start: start + self.batch_size].tolist()
        self.index += 1
        if self.index >= len(self):
            self.epoch, self.index = self.epoch + 1, 0
        return idx

    def next_batch(self) -> Any:
        return self.collate_fn([self.dataset[i] for i in self.next_indices()])

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "batch_size": self.batch_size, "n": self.n, "drop_last": int(self.drop_last)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        # A different dataset size, batch size or seed would silently change which samples
        # follow; refuse instead of resuming somewhere else.
        for k in ("seed", "batch_size", "n", "drop_last"):
            if k in state and int(state[k]) != int(self.state_dict()[k]):
                raise ValueError(f"BatchIterator state mismatch: {k}={state[k]} in checkpoint, "
                                 f"{self.state_dict()[k]} now")
        if not 0 <= int(state["index"]) < len(self):
            raise ValueError(f"BatchIterator state index {state['index']} outside [0, {len(self)})")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
