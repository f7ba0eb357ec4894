"""What every loss of the lab starts from: one scored batch, the policy's weights, the frozen reference, and
(PPO's) critic; from a `--record-batches` folder (the weights of that step, the run's starting policy as the
reference) or sampled fresh (the sampling policy is its own reference, as at a run's first step)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from contract.batch import RolloutBatch
from learner.record import RecordedStep
from minimind.checkpoint import load_model
from minimind.data import synthetic_math as sm
from minimind.data.datasets import RLPromptDataset
from minimind.model import MiniMindForCausalLM, MiniMindScoreModel
from minimind.tokenizer import MiniMindTokenizer
from recipes.bootstrap import bootstrap_policy
from recipes.inputs import check_checkpoint_path
from recipes.lab.config import LabConfig
from recipes.lab.recorded import RecordedRun
from recipes.seeds import derive_seed
from reward.actor import RewardWorker
from rollout.worker import RolloutWorker

GRPO_BOOTSTRAP = Path("runs/grpo_math/bootstrap/sft/final")
"""The demo policy python experiments/grpo_math.py builds: the lab's default when it is there."""


@dataclass
class LabStart:
    batch: RolloutBatch                 # scored
    policy: MiniMindForCausalLM         # fp32, the weights every loss starts from
    reference: MiniMindForCausalLM      # frozen: the KL's reference
    tokenizer_dir: Path
    budget: int                         # the longest response the rollout could return (Dr.GRPO, DAPO, probe)
    origin: dict[str, Any]              # where the batch comes from, for the report
    critic: MiniMindScoreModel | None = None   # a recorded PPO run's critic
    recorded: RecordedStep | None = None
    run: RecordedRun | None = None
    stage_state: dict = field(default_factory=dict)   # a recorded SPO run's tracker

    @property
    def tokenizer(self) -> MiniMindTokenizer:
        return MiniMindTokenizer.load(self.tokenizer_dir)

    def fresh_critic(self) -> MiniMindScoreModel:
        """PPO's critic: the recorded one, else a trunk copied from the policy with a zero head (as the PPO
        recipe starts it)."""
        if self.critic is not None:
            return copy.deepcopy(self.critic)
        critic = MiniMindScoreModel(self.policy.config)
        critic.model.load_state_dict(self.policy.model.state_dict())
        return critic


def from_record(cfg: LabConfig) -> LabStart:
    run = RecordedRun.open(cfg.record)
    step = run.step(cfg.step)
    policy = step.load_policy(run.init_model())
    critic = None
    if step.has_critic:
        critic = step.load_critic(MiniMindScoreModel(policy.config))
    rc = run.config
    origin = {"kind": "record", "record": str(run.root), "step": cfg.step, "folder": step.folder.name,
              "run_loss": run.run.get("loss"), "engine": step.batch.meta.get("engine", "?")}
    return LabStart(step.batch, policy, run.init_model(), run.init_dir, rc.response_budget, origin, critic=critic,
                    recorded=step, run=run, stage_state=step.state.get("stage_state", {}))


def default_init(cfg: LabConfig) -> Path:
    """--init, else the grpo_math bootstrap when present, else a small policy built (once) into --out-dir."""
    if cfg.init:
        check_checkpoint_path(cfg.init, "--init")
        return Path(cfg.init)
    if (GRPO_BOOTSTRAP / "model.safetensors").is_file():
        return GRPO_BOOTSTRAP
    return bootstrap_policy(Path(cfg.out_dir), cfg.bootstrap, cfg.seed, progress=False)


def sample_fresh(cfg: LabConfig) -> LabStart:
    """`cfg.prompts` train problems, `rollout.sampling.n` samples each, scored by the RL recipes' reward."""
    init = default_init(cfg)
    tok_dir = init if init.is_dir() else init.parent
    policy = load_model(init, dtype=torch.float32)
    tok = MiniMindTokenizer.load(tok_dir)
    problems = sm.generate_problems(cfg.prompts, derive_seed(cfg.seed, "lab-prompts"), "train")
    prompts = [dict(p, uid=i) for i, p in enumerate(RLPromptDataset(sm.rl_records(problems),
                                                                     tokenizer=tok).driver_prompts())]
    worker = RolloutWorker(cfg.rollout, policy.config, str(tok_dir), device="cpu")
    batch = worker.generate(prompts, [policy.state_dict()], 0, derive_seed(cfg.seed, "lab-rollout"))
    batch = RewardWorker(cfg.reward).score(batch)
    origin = {"kind": "fresh", "init": str(init), "prompts": cfg.prompts, "n": cfg.rollout.sampling.n,
              "engine": batch.meta.get("engine", "?")}
    return LabStart(batch, policy, copy.deepcopy(policy), tok_dir, cfg.rollout.sampling.max_new_tokens, origin)


def lab_start(cfg: LabConfig) -> LabStart:
    return from_record(cfg) if cfg.record else sample_fresh(cfg)
