"""Batching: padding collate functions and the seeded, exactly resumable BatchIterator."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from minimind.data.cache import IGNORE_INDEX, PAD_ID


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
