"""The header of a safetensors file, read without its tensors, so a run can check a checkpoint before
it starts the processes that will load it.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}), then the tensors'
bytes. A file cut short, bytes that are not safetensors at all, or a header that does not add up raise
CheckpointError naming the file and what is wrong with it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from torch import nn

from .common import EMBED_KEY, TIED_KEY, CheckpointError, check_tensors, is_tied

MAX_HEADER_BYTES = 100_000_000
"""The safetensors library's own bound on the header."""
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
"""Bytes per element of the dtypes a byte count can be checked for (sub-byte ones are only bounds-checked)."""


def _entry(path: Path, name: str, info: object) -> tuple[tuple[int, ...], int]:
    """(shape, end offset) of one header entry, or CheckpointError."""
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]  # type: ignore[index]
        ok = (isinstance(dtype, str) and all(isinstance(d, int) and d >= 0 for d in shape)
              and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path}: not a valid safetensors file: the header entry of tensor {name!r} is "
                              f"malformed ({str(info)[:120]})")
    size = DTYPE_BYTES.get(dtype)
    if size is not None and end - begin != math.prod(shape) * size:
        raise CheckpointError(f"{path}: not a valid safetensors file: tensor {name!r} of shape {shape} ({dtype}) "
                              f"takes {math.prod(shape) * size} bytes, its offsets give {end - begin}")
    return shape, end


def read_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the header of the safetensors file `path` (the tensors are not read).
    Also checks that the file holds every byte the header promises (a truncated file is named as one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes, too short for a safetensors file (truncated?)")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: not a safetensors file (its first 8 bytes announce a {n}-byte header)")
        if n > size - 8:
            raise CheckpointError(f"{path}: truncated, or not a safetensors file: its header alone would take {n} "
                                  f"bytes and the file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file, or truncated: its {n}-byte header is not "
                              "JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file: its header is not a JSON object")
    shapes, data_end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shapes[name], end = _entry(path, name, info)
        data_end = max(data_end, end)
    held = size - 8 - n
    if data_end > held:
        raise CheckpointError(f"{path}: truncated: its header lists tensors of {data_end} bytes but the file holds "
                              f"{held} bytes after the header (a copy or download cut short?)")
    return shapes


def check_header_fits(path: str | Path, model: nn.Module) -> None:
    """The tensors of safetensors file `path` are `model`'s, by name and shape (nothing is read but the
    header). A tied embedding may be stored once under either name (safetensors.torch.save_model keeps
    `lm_head.weight`, save_model `model.embed_tokens.weight`)."""
    found = read_header(path)
    tied = is_tied(model)
    if tied and EMBED_KEY not in found and TIED_KEY in found:
        found[EMBED_KEY] = found.pop(TIED_KEY)
    check_tensors(found, {k: tuple(v.shape) for k, v in model.state_dict().items()}, path, tied)
