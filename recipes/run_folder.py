"""A run folder's results are never lost by accident.

A run folder that holds results of an earlier run (a checkpoint, metrics, the final model, a summary)
is refused unless the user says what to do with them: `--resume` continues that run, `--overwrite`
replaces it. Nothing in the folder changes until the new run has started for real (data read, model
built, actors up): `start_fresh` is called at that point, so a run that fails at start-up leaves the
folder as it was. Caches (the built-in data, a trained tokenizer, the RL bootstrap) are not results
and are kept."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from learner.learner import COMPLETE_MARK, find_checkpoint
from minimind.checkpoint import CheckpointError, check_header_fits

RESULTS = ("checkpoint", "checkpoint.tmp", "checkpoint.old", "metrics.jsonl", "final", "summary.json")
"""What makes a folder hold an earlier run (checkpoint.tmp/.old: what an interrupted save leaves)."""
DERIVED = ("curves.png", "curves.png.tmp")
"""Removed with the results on --overwrite (drawn from them), but not a reason to refuse."""


class RunFolderInUse(ValueError):
    """The run folder holds an earlier run and neither --resume nor --overwrite was given."""


def previous_results(run_dir: str | Path) -> list[str]:
    run_dir = Path(run_dir)
    return [name for name in RESULTS if (run_dir / name).exists()]


def check_run_folder(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that holds an earlier run, before anything is read or written."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in --run-dir, --overwrite replaces it: pass only one")
    found = previous_results(run_dir)
    if found and not (resume or overwrite):
        raise RunFolderInUse(f"--run-dir {run_dir} holds an earlier run ({', '.join(found)}): pass --resume to "
                             f"continue it, --overwrite to replace it, or choose another --run-dir")


def start_fresh(run_dir: str | Path, resume: bool) -> None:
    """Called once the run has really started: a new run (not --resume) removes the earlier results
    (check_run_folder has made sure the user asked for that)."""
    if resume:
        return
    run_dir = Path(run_dir)
    for name in RESULTS + DERIVED:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def resume_hint(ckpt_dir: str | Path, save_flag: str) -> str:
    """Where `--resume` continues a run that stopped early: the step of the checkpoint it would take
    (find_checkpoint: what a save cut short left beside the folder too), or that none was saved and the
    flag (`save_flag`) that saves them."""
    found = find_checkpoint(ckpt_dir)
    if found is None:
        return f"no checkpoint was saved ({save_flag} saves one every N steps)"
    step = json.loads((found / COMPLETE_MARK).read_text()).get("step")
    return f"--resume continues from the checkpoint at step {step}"


SHAPE_SETTINGS = ("preset", "vocab_size", "tokenizer", "init", "teacher", "rank", "target_modules")
"""Settings of a supervised run that decide its model's tensors and their shapes."""


def check_resume_fits(run_dir: str | Path, model: nn.Module, settings: dict) -> None:
    """--resume: the run folder's checkpoint must hold `model` (same tensors, same shapes; only its header is
    read). If it does not, one line naming the settings (`settings`: this run's, as config_to_dict gives them)
    that differ from those the earlier run wrote to <run_dir>/config.json, and the flags that fix it.
    Called before this run rewrites that config.json."""
    run_dir = Path(run_dir)
    found = find_checkpoint(run_dir / "checkpoint")
    if found is None:
        return   # the train loop says that there is nothing to resume
    try:
        check_header_fits(found / "model.safetensors", model)
    except CheckpointError as e:
        earlier_file = run_dir / "config.json"
        earlier = json.loads(earlier_file.read_text()) if earlier_file.is_file() else {}
        differ = [k for k in SHAPE_SETTINGS if k in earlier and k in settings and earlier[k] != settings[k]]
        flags = lambda conf: " ".join(f"--{k.replace('_', '-')} {_shown(conf[k])}" for k in differ)  # noqa: E731
        if differ:
            raise CheckpointError(f"--resume: the checkpoint in {found} was made with {flags(earlier)} but this run "
                                  f"asks for {flags(settings)}: pass {flags(earlier)} to continue that run, or "
                                  f"--overwrite to start a new one") from None
        raise CheckpointError(f"--resume: the checkpoint in {found} does not hold the model this run builds ({e}); "
                              f"resume with the settings of that run (in {earlier_file}), or pass --overwrite "
                              f"to start a new one") from None


def _shown(value) -> str:
    """A setting as it is typed on the command line."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
