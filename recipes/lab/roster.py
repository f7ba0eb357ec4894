"""The seven policy losses as the learner trains them: each loss in the stage that computes its advantages
(GRPO's group statistics for GRPO, Dr.GRPO, DAPO, GSPO and CISPO; PPO's critic and GAE; SPO's per-prompt
tracker) and a Learner of its own on a copy of the starting weights, all sharing the frozen reference.

The lab trains every loss on the batch it is given: DAPO's dynamic sampling (dropping zero-variance
groups, refilling) picks batches, it is not part of the loss, and those groups' advantages are 0 anyway.
SPO samples one response per prompt: on a batch of groups its tracker starts from each prompt's group
rewards (the offline initialisation the SPO recipe makes from a few samples), unless the batch was
recorded by an SPO run, whose tracker comes with it."""
from __future__ import annotations

import copy
from typing import Any, Callable

from learner.learner import Learner
from learner.stages import GRPOStage, PPOStage, RLStage, RLUpdateConfig, SPOStage
from recipes.lab.config import LabConfig
from recipes.lab.start import LabStart
from recipes.seeds import derive_seed


def _group_stage(loss: Any, update: RLUpdateConfig, seed: int, start: LabStart) -> RLStage:
    return GRPOStage(loss_fn=loss, update=update, seed=seed)


def _ppo_stage(loss: Any, update: RLUpdateConfig, seed: int, start: LabStart) -> RLStage:
    return PPOStage(loss_fn=loss, update=update, seed=seed)


def _spo_stage(loss: Any, update: RLUpdateConfig, seed: int, start: LabStart) -> RLStage:
    stage = SPOStage(loss_fn=loss, update=update, seed=seed)
    if "tracker" in start.stage_state:
        stage.load_state_dict(start.stage_state)
    else:
        by_key: dict[str, list[float]] = {}
        for key, r in zip(start.batch.prompt_keys, start.batch.rewards.tolist()):
            by_key.setdefault(key, []).append(r)
        stage.init_tracker(by_key)
    return stage


STAGES: dict[str, Callable[[Any, RLUpdateConfig, int, LabStart], RLStage]] = {
    "grpo": _group_stage, "dr_grpo": _group_stage, "dapo": _group_stage, "gspo": _group_stage,
    "cispo": _group_stage, "ppo": _ppo_stage, "spo": _spo_stage,
}


def lab_stage(name: str, cfg: LabConfig, start: LabStart) -> RLStage:
    """Loss `name` (its section of `cfg`) in its stage, planning `cfg.updates` epochs over the batch."""
    return STAGES[name](cfg.loss(name, start.budget), RLUpdateConfig(epochs=cfg.updates),
                        derive_seed(cfg.seed, "lab-update"), start)


def lab_learner(stage: RLStage, cfg: LabConfig, start: LabStart) -> Learner:
    """A learner on a copy of the starting weights (PPO: with a copy of the critic too)."""
    critic = start.fresh_critic() if isinstance(stage, PPOStage) else None
    return Learner(copy.deepcopy(start.policy), stage, cfg.optim.for_run(cfg.updates), ref_model=start.reference,
                   critic=critic)
