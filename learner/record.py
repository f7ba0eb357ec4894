"""Recording what the learner trains on (`--record-batches DIR` of the RL recipes), so that a step can be
replayed offline from identical weights (experiments/loss_lab.py).

Each batch a learner step receives gets a folder `update-NNNNNN` (NNNNNN: the optimizer updates done
before it; a refill of the same step, which a filtering stage asks for, `update-NNNNNN.K`) holding:

    batch.safetensors, batch.json   the batch exactly as `Learner.train_step` got it (contract.batch_io)
    policy.safetensors              the policy's weights before the step's updates
    critic.safetensors              PPO's critic, likewise
    state.json                      learner_step, version, stale, the stage's state (SPO's tracker), then,
                                    once the step ran: trained (false for a refill), loss, grad_norm, updates

A folder is written beside its place and renamed into it, so a reader never sees half of one. The
run's config and starting policy (the reference) are the recipe's to write into DIR (recipes.recording).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import nn

from contract.batch import RolloutBatch
from contract.batch_io import load_batch, save_batch

STATE = "state.json"
PREFIX = "update-"


@dataclass
class BatchRecorder:
    """Writes one folder per `train_step` call into `root` (on the learner actor, rank 0)."""
    root: str
    last: tuple[int, int] = (-1, 0)   # (learner step, calls at that step): names refills of one step apart

    def save(self, learner: Any, batch: RolloutBatch, stale: bool) -> Path:
        """Record `batch` and the weights it is about to train (call before `learner.train_step`)."""
        step, calls = self.last
        calls = calls + 1 if step == learner.step else 0
        self.last = (learner.step, calls)
        folder = Path(self.root) / (f"{PREFIX}{learner.step:06d}" + (f".{calls}" if calls else ""))
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_batch(batch, tmp)
        safetensors.torch.save_model(learner.model, str(tmp / "policy.safetensors"))
        if learner.critic is not None:
            safetensors.torch.save_model(learner.critic, str(tmp / "critic.safetensors"))
        state = {"learner_step": learner.step, "version": learner.version, "stale": bool(stale),
                 "stage_state": learner.stage.state_dict()}
        (tmp / STATE).write_text(json.dumps(state))
        shutil.rmtree(folder, ignore_errors=True)   # a resumed run records the steps it redoes again
        tmp.rename(folder)
        return folder

    @staticmethod
    def finish(folder: Path, stats: dict[str, float]) -> None:
        """Add what the step did (call after `learner.train_step`)."""
        state = json.loads((folder / STATE).read_text())
        state.update(trained=not stats.get("need_more"), loss=stats.get("loss"), grad_norm=stats.get("grad_norm"),
                     updates=stats.get("updates"))
        tmp = folder / (STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(folder / STATE)


@dataclass
class RecordedStep:
    """One recorded `train_step` call, read back."""
    folder: Path
    batch: RolloutBatch
    state: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path) -> "RecordedStep":
        folder = Path(folder)
        if not (folder / STATE).is_file():
            raise FileNotFoundError(f"{folder / STATE}: not found (not a folder written by --record-batches)")
        return cls(folder, load_batch(folder), json.loads((folder / STATE).read_text()))

    def load_policy(self, model: nn.Module) -> nn.Module:
        """`model` (built from the run's starting policy) with this step's policy weights."""
        return _load(model, self.folder / "policy.safetensors")

    def load_critic(self, critic: nn.Module) -> nn.Module:
        return _load(critic, self.folder / "critic.safetensors")

    @property
    def has_critic(self) -> bool:
        return (self.folder / "critic.safetensors").is_file()


def _load(module: nn.Module, path: Path) -> nn.Module:
    try:
        safetensors.torch.load_model(module, str(path), strict=True)
    except (OSError, RuntimeError, safetensors.SafetensorError) as e:
        first = next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)
        raise ValueError(f"{path}: does not load into this model ({first})") from e
    return module


def trained_steps(root: str | Path) -> list[Path]:
    """The folders of `root` whose batch was trained on (refills that only asked for more are left out), in
    the order the run trained them: the i-th is the run's step i+1 of those recorded."""
    root = Path(root)
    found = []
    for folder in root.glob(PREFIX + "*"):
        state = folder / STATE
        if folder.is_dir() and not folder.name.endswith(".tmp") and state.is_file():
            if json.loads(state.read_text()).get("trained"):
                found.append(folder)
    return sorted(found, key=lambda f: _order(f.name))


def _order(name: str) -> tuple[int, int]:
    step, _, call = name[len(PREFIX):].partition(".")
    return int(step), int(call or 0)
