"""A `--record-batches` folder read back: the run's config (the class it was made with, its settings as the
run applied them), its starting policy and tokenizer, and its recorded steps (learner.record)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from learner.record import RecordedStep, trained_steps
from minimind.checkpoint import load_model
from minimind.model import MiniMindForCausalLM
from recipes.cli import parse_config
from recipes.recording import CONFIG, INIT, RUN
from recipes.rl_config import GRPOMathConfig, PPOMathConfig, SPOMathConfig
from recipes.tools_rl import ToolsGRPOConfig

CONFIG_CLASSES = {c.__name__: c for c in (GRPOMathConfig, PPOMathConfig, SPOMathConfig, ToolsGRPOConfig)}
"""The config classes a recording names (run.json `config_class`)."""


@dataclass
class RecordedRun:
    root: Path
    run: dict[str, Any]
    config: Any          # the recipe's config (GRPOMathConfig, ...) as the run applied it

    @classmethod
    def open(cls, root: str | Path) -> "RecordedRun":
        root = Path(root)
        for name in (RUN, CONFIG, INIT):
            if not (root / name).exists():
                raise FileNotFoundError(f"{root / name}: not found; --record takes a folder written by an RL "
                                        f"recipe's --record-batches DIR")
        run = json.loads((root / RUN).read_text())
        if run.get("config_class") not in CONFIG_CLASSES:
            raise ValueError(f"{root / RUN}: config_class {run.get('config_class')!r} is not one of "
                             f"{', '.join(CONFIG_CLASSES)}")
        config = parse_config(CONFIG_CLASSES[run["config_class"]], ["--config", str(root / CONFIG)])
        return cls(root, run, config)

    @property
    def init_dir(self) -> Path:
        """The run's starting policy (the reference of its KL) and its tokenizer."""
        return self.root / INIT

    def init_model(self) -> MiniMindForCausalLM:
        return load_model(self.init_dir, dtype=torch.float32)

    def step(self, n: int) -> RecordedStep:
        """The batch the run trained at its n-th recorded step (1-based)."""
        steps = trained_steps(self.root)
        if not 1 <= n <= len(steps):
            raise ValueError(f"--step {n}: {self.root} holds {len(steps)} recorded step(s)")
        return RecordedStep.load(steps[n - 1])
