"""`--record-batches DIR` of the RL recipes: the learner writes every batch it trains on, with the weights
it starts from (learner.record); the recipe writes what a replay needs besides: which config class the run
used and its settings as it applied them (run.json, config.json), and the starting policy with its
tokenizer (init/: the frozen reference of the KL, and the model every recorded policy loads into).
experiments/loss_lab.py --record DIR reads it (recipes.lab.recorded)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from learner.record import PREFIX, BatchRecorder
from minimind.checkpoint import load_model, save_model
from minimind.tokenizer import MiniMindTokenizer
from recipes.cli import config_to_dict

RUN = "run.json"
CONFIG = "config.json"
INIT = "init"


def _holds_records(root: Path) -> bool:
    return (root / RUN).is_file() or any(root.glob(PREFIX + "*"))


def check_record_dir(cfg: Any) -> None:
    """Before anything is written: a folder that holds another run's records is refused, as a run folder is."""
    if not cfg.record_batches:
        return
    root = Path(cfg.record_batches)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--record-batches {root}: not a folder")
    if _holds_records(root) and not (cfg.resume or cfg.overwrite):
        raise ValueError(f"--record-batches {root} holds the records of an earlier run: pass --resume to continue "
                         f"it, --overwrite to replace them, or choose another folder")


def recorder(cfg: Any) -> BatchRecorder | None:
    """What the learner actor records with (None without --record-batches)."""
    return BatchRecorder(str(Path(cfg.record_batches).resolve())) if cfg.record_batches else None


def start_recording(cfg: Any, init_dir: Path, tokenizer_dir: Path) -> None:
    """Once the run has really started: a new run (not --resume) clears earlier records, then the run's
    config and starting policy are written."""
    if not cfg.record_batches:
        return
    root = Path(cfg.record_batches)
    if not cfg.resume:
        for old in [*root.glob(PREFIX + "*"), root / INIT]:
            shutil.rmtree(old, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / RUN).write_text(json.dumps({"config_class": type(cfg).__name__, "algo": cfg.algo,
                                        "loss": cfg.loss_name}, indent=2))
    (root / CONFIG).write_text(json.dumps(config_to_dict(cfg), indent=2))
    # as the learner loads it (fp32): the reference a replay builds is the run's, bit for bit
    init = save_model(load_model(init_dir, dtype=torch.float32, **cfg.pth.kwargs()), root / INIT)
    MiniMindTokenizer.load(tokenizer_dir).save(init)
