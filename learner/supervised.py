"""The supervised training loop shared by every supervised recipe (pretrain, SFT, LoRA, DPO,
distillation, reward model): batches from a resumable iterator, checkpoints that hold the data
position, exact resume, metrics and a loss-curve PNG."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from .learner import Learner, find_checkpoint
from .curves import Layout, plot_curves
from .metrics import MetricsLogger

log = logging.getLogger(__name__)


def train_loop(learner: Learner, batches: Any, steps: int, run_dir: str | Path,
               checkpoint_every: int = 0, resume: bool = False, progress: bool = True,
               on_step: Callable[[int, dict], None] | None = None,
               plot_keys: tuple[str, ...] = ("loss", "lr", "grad_norm"), plot_every: int = 0,
               evaluate: Callable[[Any, int], dict[str, float]] | None = None, eval_every: int = 0) -> dict[str, float]:
    """Run `steps` optimizer steps over `batches` (a minimind.data.BatchIterator).

    Checkpoints go to `run_dir/checkpoint` (model, optimizer, schedule, RNG, data position). With
    `resume`, training continues from that checkpoint exactly where it stopped, mid-epoch or at an
    epoch boundary; a run stopped and resumed ends with the same weights as an uninterrupted one.
    `run_dir/curves.png` is redrawn every `plot_every` steps (0: at the end only), so a person can
    watch a run as it trains. `evaluate(model, step) -> stats` runs every `eval_every` updates on the
    rank that logs; its stats join that step's record (a held-out curve beside the training loss).
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint"
    if resume:
        if find_checkpoint(ckpt) is None:   # also what a save interrupted by a crash left beside it
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        extra = learner.load_checkpoint(ckpt)
        batches.load_state_dict(extra["data"])
        log.info("resumed from %s at step %d", ckpt, learner.step)
    # one writer: on a learner group every rank reads the same batches and trains its rows; rank 0
    # logs, plots and checkpoints (its model, optimizer and data position are every rank's)
    lead = learner.comm.rank == 0
    logger = MetricsLogger(run_dir, total_steps=steps, desc=learner.stage.name, enable_progress=progress) if lead else None
    if resume and lead:
        logger.drop_after(learner.step)
    layout = Layout.of_keys(plot_keys)
    stats: dict[str, float] = {}
    try:
        while learner.step < steps:
            stats = learner.train_step(batches.next_batch())
            if lead and eval_every and learner.step % eval_every == 0:
                stats = {**stats, **evaluate(learner.model, learner.step)}
            if lead:
                logger.log(learner.step, **{k: v for k, v in stats.items() if k not in ("step", "time")})
                if plot_every and learner.step % plot_every == 0:
                    plot_curves(logger.path, run_dir / "curves.png", layout, title=learner.stage.name)
            if on_step is not None:
                on_step(learner.step, stats)
            if checkpoint_every and (learner.step % checkpoint_every == 0 or learner.step == steps):
                learner.save_checkpoint(ckpt, {"data": batches.state_dict()})
    finally:
        if lead:
            logger.close()
    if lead and logger.path.exists():
        plot_curves(logger.path, run_dir / "curves.png", layout, title=learner.stage.name)
    return stats
