"""Learner: the one training loop every stage plugs into.

A `Stage` turns a batch into a `StepPlan`: the optimizer updates (each a list of micro-batches) and
the batch's stats; `loss(learner, micro)` returns (loss, stats). Losses are normalised by
full-(mini)batch counts carried in each micro-batch, so summing micro-batch gradients gives exactly
the big-batch gradient. Supervised stages plan one update per batch; RL stages compute their
experience once and plan epochs x minibatches updates. A stage never writes into the learner: what
it reports is in its plan and its loss stats, reduced once per step by token count.

The Learner owns the model(s), AdamW, the schedule, clipping, autocast, the non-finite guard and
checkpoints (model + optimizer + step + RNG + stage state + caller's data position).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import numpy as np
import safetensors.torch
import torch
from torch import nn

from contract.stats import Reduce, maximum, reduction, total

from .config import OptimConfig
from .distributed import Comm

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the message names the step and what was restored."""


@dataclass
class StepPlan:
    """What a stage makes of one batch: the optimizer updates to run (each a list of micro-batches
    whose gradients add up to the update's), the batch-level stats, and whether a filtering stage
    needs more rollouts before it can train (the driver then sends another batch for the same step)."""
    updates: Iterable[list[Any]]
    stats: dict[str, float] = field(default_factory=dict)
    need_more: bool = False


class Stage(Protocol):
    name: str
    max_sane_lr: float

    def trainable(self, learner: "Learner") -> list[nn.Module]: ...
    def plan(self, learner: "Learner", batch: Any) -> StepPlan: ...
    def loss(self, learner: "Learner", micro: Any) -> tuple[torch.Tensor, dict[str, float]]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def micro_tokens(micro: Any) -> float:
    """The weight of a micro-batch's stats: its loss-carrying tokens (rows for pairwise losses)."""
    return float(micro.tokens if hasattr(micro, "tokens") else micro["tokens"])


class StatReducer:
    """Stats of every micro-batch of a step, reduced once, each by its own `Reduce` (contract.stats):
    means weighted by the micro-batch's tokens, maxima, sums."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.how: dict[str, Reduce] = {}

    def add(self, stats: dict[str, float], tokens: float) -> None:
        for k, v in stats.items():
            how = self.how.setdefault(k, reduction(v))
            if how is Reduce.MAX:
                self.sums[k] = max(self.sums.get(k, -math.inf), float(v))
            elif how is Reduce.SUM:
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
            else:
                self.sums[k] = self.sums.get(k, 0.0) + tokens * float(v)
                self.weights[k] = self.weights.get(k, 0.0) + tokens

    def merge(self, other: "StatReducer") -> None:
        for k, v in other.sums.items():
            how = self.how.setdefault(k, other.how[k])
            if how is Reduce.MAX:
                self.sums[k] = max(self.sums.get(k, -math.inf), v)
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v
                if how is Reduce.MEAN:
                    self.weights[k] = self.weights.get(k, 0.0) + other.weights[k]

    def result(self) -> dict[str, float]:
        return {k: (v / self.weights[k] if self.weights[k] > 0 else 0.0) if self.how[k] is Reduce.MEAN else v
                for k, v in self.sums.items()}


def merge_batch_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """Every rank's plan stats as one learner's, each by its own `Reduce`: sums, maxima, and means
    weighted by each rank's rows (a rank's `rows`; 1 each where a stage reports none)."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, float] = {}
    for k in {k for p in parts for k in p}:
        vals = [(p[k], p.get("rows", 1.0)) for p in parts if k in p]
        how = reduction(vals[0][0])
        if how is Reduce.SUM:
            out[k] = total(sum(v for v, _ in vals))
        elif how is Reduce.MAX:
            out[k] = maximum(max(v for v, _ in vals))
        else:
            w = sum(n for _, n in vals)
            out[k] = sum(v * n for v, n in vals) / w if w > 0 else sum(v for v, _ in vals) / len(vals)
    return out


def batch_rows(batch: dict[str, Any]) -> int:
    """Rows of a dict batch (the length of its row-indexed tensors/lists)."""
    return next(len(v) for v in batch.values() if isinstance(v, (torch.Tensor, list)))


def take_rows(batch: dict[str, Any], rows: slice) -> dict[str, Any]:
    """`rows` of every row-indexed tensor/list of a dict batch; scalars (global counts) stay as they are."""
    return {k: (v[rows] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}


def split_rows(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Split every row-indexed tensor/list of a dict batch into chunks of `size` rows;
    scalars (global counts) are shared by every chunk."""
    n = batch_rows(batch)
    if size <= 0 or size >= n:
        return [batch]
    return [take_rows(batch, slice(s, s + size)) for s in range(0, n, size)]


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors/ints only (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


COMPLETE_MARK = "extra.json"
"""Written last into a checkpoint folder: its presence means every other file is complete."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(e: Exception) -> str:
    """A loader's multi-line message as one line: shape mismatches counted, the first one shown."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    shapes = [x for x in lines if x.startswith("size mismatch")]
    if shapes:
        return (f"{len(shapes)} tensor(s) differ in shape from this model ({shapes[0]}); the checkpoint was "
                f"made with other model settings (--preset / model flags must match the run it continues)")
    return lines[0] if lines else type(e).__name__


def find_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint at `path`: the folder itself, or what a save interrupted by a
    crash left beside it (`.tmp` fully written but not renamed, `.old` moved aside)."""
    path = Path(path)
    complete = [c for c in (path, path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old"))
                if (c / COMPLETE_MARK).is_file() and (c / "trainer_state.pt").is_file()]
    return max(complete, key=lambda c: (c / COMPLETE_MARK).stat().st_mtime_ns, default=None)


def compile_blocks(module: nn.Module | None) -> None:
    """torch.compile the forward of every decoder block of `module` (in place; dynamic shapes, since
    batch and sequence lengths change every step). Parameters, state dict and checkpoints are unchanged."""
    from minimind.model import Block

    for m in module.modules() if module is not None else ():
        if isinstance(m, Block):
            m.forward = torch.compile(m.forward, dynamic=True)


class Learner:
    def __init__(self, model: nn.Module, stage: Stage, optim: OptimConfig | None = None,
                 ref_model: nn.Module | None = None, critic: nn.Module | None = None,
                 device: str | torch.device = "cpu", comm: Comm | None = None):
        self.device = torch.device(device)
        self.comm = comm or Comm(device=self.device)   # data-parallel rank (a world of one by default)
        self.model = model.to(self.device)
        self.ref_model = ref_model.to(self.device).eval().requires_grad_(False) if ref_model is not None else None
        self.critic = critic.to(self.device) if critic is not None else None
        self.stage = stage
        self.optim_cfg = optim or OptimConfig()
        self.step = 0              # optimizer updates done
        self.version = 0           # bumped on every update: the policy version rollouts quote
        self.bad_steps = 0
        self.last_good_ckpt: Path | None = None
        self.published: int | None = None   # the driver's serial of the weights rollouts last got (None: never)
        self.dirty = False                  # updated since that publication
        if self.optim_cfg.lr > stage.max_sane_lr:
            log.warning("lr=%g is unusually high for stage %r (typical <= %g); expect divergence",
                        self.optim_cfg.lr, stage.name, stage.max_sane_lr)
        self.optimizer = self._make_optimizer()
        if self.optim_cfg.compile:
            for module in (self.model, self.ref_model, self.critic):
                compile_blocks(module)

    # ------------------------------------------------------------------ setup
    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        seen: set[int] = set()
        for module in self.stage.trainable(self):
            for name, p in module.named_parameters():
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                (no_decay if p.ndim < 2 else decay).append(p)
        if not decay and not no_decay:
            raise ValueError(f"stage {self.stage.name!r}: no trainable parameters")
        c = self.optim_cfg
        groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # the fused kernel on CUDA and CPU alike: on 2 CPU cores it is 3x faster than the default
        # per-tensor loop (minimind2-small: 62 -> 20 ms per optimizer step)
        fused = self.device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=c.lr_at(0), betas=(c.beta1, c.beta2), fused=fused)

    def params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()  # fp32 on CPU: bf16 is 10-100x slower there

    # ------------------------------------------------------------------ training
    def train_step(self, batch: Any) -> dict[str, float]:
        """All optimizer updates the stage plans for `batch`; returns the step's stats."""
        t0 = time.perf_counter()
        self.model.train()
        if self.critic is not None:
            self.critic.train()
        plan = self.stage.plan(self, batch)
        reducer = StatReducer()
        losses, norms, skipped = [], [], 0
        for micro_batches in plan.updates:
            loss, grad_norm, ok = self._update(micro_batches, reducer)
            losses.append(loss)
            norms.append(grad_norm)
            skipped += not ok
        out = self._global_stats(reducer, plan.stats, t0)
        if losses:
            out.update(loss=sum(losses) / len(losses), grad_norm=sum(norms) / len(norms))
        if skipped:
            out["skipped"] = float(skipped)
        self.dirty = self.dirty or len(losses) > skipped
        out.update(need_more=float(plan.need_more), updates=len(losses) - skipped,
                   lr=self.optimizer.param_groups[0]["lr"], learn_seconds=time.perf_counter() - t0, step=self.step)
        return out

    def _global_stats(self, reducer: StatReducer, plan_stats: dict[str, float], t0: float) -> dict[str, float]:
        """The step's stats over every rank (a world of one: this rank's), with each rank's step time
        and time in collectives when there are several."""
        if not self.comm.distributed:
            return {**reducer.result(), **plan_stats}
        mine = (reducer, plan_stats, time.perf_counter() - t0, self.comm.take_seconds())
        parts = self.comm.gather(mine)
        total = StatReducer()
        for r, *_ in parts:
            total.merge(r)
        out = {**total.result(), **merge_batch_stats([p for _, p, _, _ in parts])}
        for rank, (_, stats, seconds, comm_s) in enumerate(parts):
            out[f"learn_seconds_rank{rank}"] = seconds
            out[f"allreduce_seconds_rank{rank}"] = comm_s
            if "rows" in stats:   # the rank's share of the batch (load balance)
                out[f"rows_rank{rank}"] = stats["rows"]
        out["allreduce_seconds"] = max(c for *_, c in parts)
        return out

    def _update(self, micro_batches: list[Any], reducer: StatReducer) -> tuple[float, float, bool]:
        """One optimizer update from the summed micro-batch gradients: (loss, grad norm, applied)."""
        for g in self.optimizer.param_groups:
            g["lr"] = self.optim_cfg.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss_total = 0.0
        for micro in micro_batches:
            with self.autocast():
                loss, stats = self.stage.loss(self, micro)
            loss.backward()
            loss_total += float(loss.detach())
            reducer.add(stats, micro_tokens(micro))
        params = self.params()
        if self.comm.distributed:   # each rank's loss is its share of the whole batch's: sum both
            self.comm.reduce_grads(params)
            (loss_total,) = self.comm.sum_floats(loss_total)
        clip = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if not (math.isfinite(loss_total) and math.isfinite(grad_norm)):
            self._bad_step(loss_total, grad_norm)
            return loss_total, grad_norm, False
        self.optimizer.step()
        self.bad_steps = 0
        self.step += 1
        self.version += 1
        return loss_total, grad_norm, True

    def _bad_step(self, loss: float, grad_norm: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        log.warning("step %d: non-finite loss=%s grad_norm=%s, update skipped (%d in a row)",
                    self.step, loss, grad_norm, self.bad_steps)
        if self.bad_steps >= self.optim_cfg.max_bad_steps:
            at = self.step  # name the step where it diverged, not the one restored below
            restored = "nothing (no checkpoint saved yet)"
            if self.last_good_ckpt is not None:
                self.load_checkpoint(self.last_good_ckpt)
                restored = f"the last good checkpoint {self.last_good_ckpt} (step {self.step})"
            raise TrainingDiverged(
                f"{self.optim_cfg.max_bad_steps} consecutive non-finite steps ending at step {at} "
                f"(loss={loss}, grad_norm={grad_norm}); restored {restored}. Lower the lr or check the data.")

    # ------------------------------------------------------------------ helpers for stages
    def publish(self, version: int) -> None:
        """The current weights go to the rollouts as `version` (the driver's serial)."""
        self.published, self.dirty = version, False

    def is_stale(self, batch: Any) -> bool:
        """Sampled with weights other than the current ones (an older publication, or updates since it):
        the rollout's own logprobs are then the behaviour policy. Read from the batch's
        `policy_version`, set by its producer; never written into the batch."""
        if self.published is None:   # used directly, without rollouts: batches are the caller's business
            return False
        return self.dirty or getattr(batch, "policy_version", self.published) != self.published

    def weights(self) -> dict[str, torch.Tensor]:
        """Policy state dict on CPU (what rollout workers load), tied weights kept once."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path, extra: dict | None = None) -> Path:
        """model(s) as safetensors + optimizer/step/RNG/stage/extra as a weights-only torch file.
        Atomic: written beside (`<path>.tmp`, every file fsync'd, `extra.json` last marks it
        complete), then renamed into place; a crash at any point leaves a complete checkpoint that
        `find_checkpoint` finds. Rank 0 of a learner group writes it (every rank holds the same model,
        optimizer and stage state); the others only note where it is."""
        path = Path(path)
        if self.comm.rank != 0:
            self.last_good_ckpt = path
            return path
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # safetensors' save_model dedupes tied tensors and works for any module (LoRA-wrapped too)
        safetensors.torch.save_model(self.model, str(tmp / "model.safetensors"))
        if self.critic is not None:
            safetensors.torch.save_model(self.critic, str(tmp / "critic.safetensors"))
        torch.save({
            "optimizer": self.optimizer.state_dict(), "step": self.step, "version": self.version,
            "rng": rng_state(), "stage": self.stage.state_dict(),
        }, tmp / "trainer_state.pt")
        for f in tmp.iterdir():
            _fsync(f)
        (tmp / COMPLETE_MARK).write_text(json.dumps(extra or {}))
        _fsync(tmp / COMPLETE_MARK)
        if path.exists():
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
        _fsync(path.parent)
        self.last_good_ckpt = path
        return path

    def load_checkpoint(self, path: str | Path) -> dict:
        """Restore everything save_checkpoint wrote; returns the caller's `extra` dict."""
        from minimind.checkpoint import CheckpointError

        found = find_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no complete learner checkpoint at {path} (nor {path}.old / {path}.tmp)")
        path = found
        state_file = path / "trainer_state.pt"
        for module, name in ((self.model, "model"), (self.critic, "critic")):
            if module is None:
                continue
            try:
                safetensors.torch.load_model(module, str(path / f"{name}.safetensors"), strict=True)
            except Exception as e:  # missing file, corrupt file, missing/unexpected/mis-shaped tensors
                raise CheckpointError(f"{path / f'{name}.safetensors'}: {_one_line(e)}") from e
        try:  # weights_only: the file holds tensors, numbers, strings and tuples only
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated / corrupt zip, or something not saved by save_checkpoint
            raise CheckpointError(f"{state_file}: cannot read the trainer state (truncated or corrupt?): "
                                  f"{_one_line(e)}") from e
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.version = state["step"], state["version"]
        set_rng_state(state["rng"])
        self.stage.load_state_dict(state["stage"])
        self.last_good_ckpt = path
        self.bad_steps = 0
        return json.loads((path / COMPLETE_MARK).read_text())
