"""A recorded step trained again: the run's own stage (its config as the run applied it) on a learner with
the step's weights, critic, tracker, update count and staleness; its loss is the run's step loss."""
from __future__ import annotations

from learner.learner import Learner
from learner.record import RecordedStep
from minimind.model import MiniMindScoreModel
from recipes.lab.recorded import RecordedRun


def replay_step(run: RecordedRun, step: RecordedStep) -> dict[str, float]:
    """The stats `Learner.train_step` gives on the recorded batch (what the run logged in metrics.jsonl)."""
    cfg = run.config
    stage = cfg.stage()
    if getattr(stage, "filter", None) is not None:
        raise ValueError(f"{step.folder}: a step with dynamic sampling (--filter-zero-variance) trains on groups "
                         f"collected over several rollout calls; only steps without it can be replayed")
    stage.load_state_dict(step.state.get("stage_state", {}))
    policy = step.load_policy(run.init_model())
    ref = run.init_model() if cfg.policy_loss.kl.needs_reference else None
    critic = step.load_critic(MiniMindScoreModel(policy.config)) if step.has_critic else None
    learner = Learner(policy, stage, cfg.optim.for_run(cfg.updates), ref_model=ref, critic=critic)
    learner.step, learner.version = step.state["learner_step"], step.state["version"]   # lr and shuffle of that update
    if step.state["stale"]:   # sampled with other weights: the run trained against the rollout's logprobs
        learner.publish(step.batch.policy_version + 1)
    return learner.train_step(step.batch)
