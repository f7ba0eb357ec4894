"""A `RolloutBatch` on disk and back: its tensors in one safetensors file, everything else (token
texts, keys, answers, the temperature, versions, reward and meta summaries) in one JSON file. Both are
read without executing anything (no pickle). Fields are found from the dataclass itself, so a field
added to the batch is saved and loaded without touching this file."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import safetensors.torch
import torch

from .batch import RolloutBatch

TENSORS = "batch.safetensors"
OTHERS = "batch.json"


def save_batch(batch: RolloutBatch, folder: str | Path) -> Path:
    """Write `batch` into `folder` (created); returns the folder. Values of `meta` and `reward_info` that
    JSON cannot hold are written as their repr (they are summaries; the learner reads none of them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, others = {}, {}
    for f in fields(RolloutBatch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            tensors[f.name] = value.detach().cpu().contiguous()
        else:
            others[f.name] = value
    safetensors.torch.save_file(tensors, str(folder / TENSORS))
    (folder / OTHERS).write_text(json.dumps(others, default=repr))
    return folder


def load_batch(folder: str | Path) -> RolloutBatch:
    """The batch `save_batch` wrote into `folder`; a missing file or an unknown or missing field is a
    one-line ValueError naming the file and the field."""
    folder = Path(folder)
    for name in (TENSORS, OTHERS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: not found (not a batch written by contract.batch_io)")
    try:
        values = dict(safetensors.torch.load_file(str(folder / TENSORS)))
        values.update(json.loads((folder / OTHERS).read_text()))
    except (OSError, ValueError, safetensors.SafetensorError) as e:
        raise ValueError(f"{folder}: cannot read the batch ({e})") from e
    known = {f.name for f in fields(RolloutBatch)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{folder / OTHERS}: unknown batch field(s) {', '.join(unknown)} (written by another version)")
    try:
        return RolloutBatch(**values)
    except TypeError as e:   # a required field is missing
        raise ValueError(f"{folder}: {e}") from None
