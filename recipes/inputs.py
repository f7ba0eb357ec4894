"""Checks of the paths and devices a user names, made before anything is read or written, so a
typo is one line naming the flag and the value (not a traceback from deep inside a reader)."""
from __future__ import annotations

from pathlib import Path

import torch

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def check_data_path(path: str | Path, flag: str) -> Path:
    """A data file that exists, is a file, and is not empty."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag} {p}: no such data file")
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {p} is a folder: pass the data file itself ({', '.join(DATA_SUFFIXES)})")
    if p.stat().st_size == 0:
        raise ValueError(f"{flag} {p}: the data file is empty")
    return p


def check_checkpoint_path(path: str | Path, flag: str) -> Path:
    """A model to start from: a save_model folder (config.json + weights) or a weights file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag} {p}: no such checkpoint (a model folder with config.json, or a "
                                f"MiniMind .pth / .safetensors file)")
    if p.is_dir() and not any((p / n).is_file() for n in ("model.safetensors", "config.json")):
        raise FileNotFoundError(f"{flag} {p}: this folder holds no model (no model.safetensors or config.json)")
    return p


def check_device(name: str) -> None:
    """`--device cuda[:i]` on a machine whose torch sees no GPU."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}); "
                             f"use --device cpu or --device auto")
        index = name.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
