"""The RL system on real Ray actors (CPU): LearnerActor + 2 RolloutActors + RewardActor wired by
RLDriver. The driver only ever receives stats (never a RolloutBatch), the learner's old logprobs
equal the rollout's, weights and versions move, off-policy reports staleness, a killed rollout
worker is restarted and the run completes, and experiments/grpo_math.py runs end to end and resumes."""
from __future__ import annotations

import copy
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from learner.actor import LearnerActor
from learner.config import OptimConfig
from learner.learner import Learner
from learner.rl_stages import GRPOStage, RLUpdateConfig
from minimind.config import MiniMindConfig, preset
from minimind.data import synthetic_math as sm
from minimind.data.datasets import RLPromptDataset
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import train_tokenizer
from reward.actor import RewardActor, RewardConfig
from reward.scorers import MathVerifierScorer
from rollout.batch import RolloutBatch
from rollout.driver import DriverConfig, RLDriver
from rollout.worker import RolloutActor, RolloutConfig

ROOT = Path(__file__).resolve().parents[1]
CPU0 = {"num_cpus": 0}                                  # everything fits a 2-core machine
RESTART = {"max_restarts": 3, "max_task_retries": 3}    # as learner.rl_recipe.start_actors


class FirstTokenEven:
    """Reward 1 when the first response token id is even: learnable, and every group varies."""

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        return (batch.response_ids[:, 0] % 2 == 0).float()


def make_learner(cfg: dict, seed: int) -> Learner:
    torch.manual_seed(seed)
    policy = MiniMindForCausalLM(MiniMindConfig.from_dict(cfg))
    stage = GRPOStage(update=RLUpdateConfig(epochs=1, minibatches=2))
    optim = OptimConfig(lr=1e-3, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0)
    return Learner(policy, stage, optim, ref_model=copy.deepcopy(policy))


def _pid(actor) -> int:
    import ray
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60)


@pytest.fixture(scope="module")
def actors(ray_local, tmp_path_factory):
    ray = ray_local
    this = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(this)   # workers cannot import this test module
    tok_dir = tmp_path_factory.mktemp("tok")
    problems = sm.generate_problems(300, seed=0, split="train")
    tok = train_tokenizer(sm.pretrain_texts(problems, facts=False), vocab_size=320)
    tok.save(tok_dir)
    cfg = preset("tiny", vocab_size=tok.vocab_size).to_dict()
    learner = LearnerActor.options(name="t-learner", **CPU0).remote(functools.partial(make_learner, cfg, 0),
                                                                    threads=1)
    rcfg = RolloutConfig(group_size=4, max_new_tokens=8, temperature=1.0)
    rollouts = [RolloutActor.options(name=f"t-rollout-{i}", **CPU0, **RESTART).remote(
        rcfg, cfg, str(tok_dir), device="cpu", worker_index=i, threads=1) for i in range(2)]
    reward = RewardActor.options(name="t-reward", **CPU0, **RESTART).remote(
        RewardConfig(timeout_s=None),
        components=[("math", MathVerifierScorer(), 0.0), ("first_even", FirstTokenEven(), 1.0)])
    ds = RLPromptDataset(sm.rl_records(problems[:40]))
    prompts = ds.driver_prompts()
    yield SimpleNamespace(learner=learner, rollouts=rollouts, rewards=[reward], train=prompts[:32],
                          eval=prompts[32:36])
    for a in [learner, *rollouts, reward]:
        ray.kill(a)
    ray.cloudpickle.unregister_pickle_by_value(this)


def _finite(stats: dict) -> None:
    for k, v in stats.items():
        assert isinstance(v, (int, float)) and math.isfinite(v), (k, v)


def _weights(a) -> dict:
    import ray
    return ray.get(a.learner.weights.remote(), timeout=60)


def test_grpo_steps_move_only_stats_to_the_driver(actors, monkeypatch):
    import ray

    import rollout.driver as driver_mod
    w0 = _weights(actors)
    v0 = ray.get(actors.learner.version.remote())
    got: list[str] = []
    real_get = ray.get

    def recording_get(refs, *args, **kwargs):
        out = real_get(refs, *args, **kwargs)
        for v in (out if isinstance(out, list) else [out]):
            assert not isinstance(v, RolloutBatch), "the driver materialised a RolloutBatch"
            got.append(type(v).__name__)
        return out

    monkeypatch.setattr(driver_mod.ray, "get", recording_get)
    drv = RLDriver(DriverConfig(steps=3, prompts_per_step=4), actors.learner, actors.rollouts, actors.rewards,
                   actors.train, actors.eval)
    history = drv.run()
    ev = drv.evaluate()
    monkeypatch.undo()

    assert got and set(got) <= {"dict", "int", "float"}, got
    assert len(history) == 3
    for i, s in enumerate(history):
        _finite(s)
        assert s["logprob_gap"] < 1e-5, s["logprob_gap"]     # learner's old logprobs == the rollout's
        assert s["updates"] == 2 and s["rows"] == 16.0      # 4 prompts x G=4, epochs 1 x minibatches 2
        assert s["version"] == i + 1 and s["staleness"] == 0.0
        assert "kl" in s and "entropy" in s and "accuracy" in s and s["refills"] == 0
    assert ray.get(actors.learner.version.remote()) == v0 + 6
    w1 = _weights(actors)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert set(ev) == {"eval_accuracy", "eval_reward", "eval_response_length"} and ev["eval_response_length"] > 0
    ev = drv.evaluate(samples=2)
    assert {"eval_accuracy", "eval_sampled_accuracy", "eval_sampled_response_length"} <= set(ev)


def test_off_policy_runs_and_reports_staleness(actors):
    drv = RLDriver(DriverConfig(steps=3, prompts_per_step=4, off_policy=True), actors.learner, actors.rollouts,
                   actors.rewards, actors.train, actors.eval)
    history = drv.run()
    assert len(history) == 3
    for s in history:
        _finite(s)
    # step 0 samples with the current weights; later steps were generated while the previous update ran
    assert [s["staleness"] for s in history] == [0.0, 1.0, 1.0]
    # stale batches are trained against the behaviour policy's logprobs (nothing recomputed, so no
    # gap to report), fresh ones against the learner's recomputation
    assert history[0]["logprob_gap"] < 1e-5 and "logprob_gap" not in history[1]
    assert [s["stale"] for s in history] == [0.0, 1.0, 1.0]


def test_killed_rollout_worker_is_restarted_and_the_run_completes(actors):
    import ray

    pid0 = _pid(actors.rollouts[0])
    killed = []

    def kill_after_first(step, stats):
        if step == 1:   # the next step's rollouts are already in flight
            ray.kill(actors.rollouts[0], no_restart=False)
            killed.append(step)

    drv = RLDriver(DriverConfig(steps=3, prompts_per_step=4), actors.learner, actors.rollouts, actors.rewards,
                   actors.train, actors.eval, on_step=kill_after_first)
    history = drv.run()
    assert killed == [1] and len(history) == 3
    for s in history:
        _finite(s)
        assert s["rows"] == 16.0 and s["logprob_gap"] < 1e-5
    assert _pid(actors.rollouts[0]) != pid0               # a new process answered after the kill


# ----------------------------------------------------------------------------- end to end
def _grpo_math(run_dir: Path, address: str, *extra: str) -> subprocess.CompletedProcess:
    """The script in its own process (it shuts Ray down at the end), joining the session's Ray as it
    would join a cluster: starting a fresh local Ray per run costs several seconds on 2 cores."""
    args = [sys.executable, str(ROOT / "experiments" / "grpo_math.py"), f"--run-dir={run_dir}", f"--address={address}",
            "--bootstrap.preset=tiny", "--bootstrap.n-train=100", "--bootstrap.pretrain-steps=1",
            "--bootstrap.sft-steps=1", "--n-prompts=16", "--eval-size=8", "--no-dashboard", "--no-progress",
            "--rollout-workers=2", "--threads=1", "--rollout.group-size=2", "--rollout.max-new-tokens=8",
            "--driver.prompts-per-step=2", "--driver.checkpoint-every=1", *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(args, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def test_grpo_math_end_to_end_and_resume(ray_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    run_dir = tmp_path / "run"
    _grpo_math(run_dir, address, "--driver.steps=2")
    for name in ("summary.json", "metrics.jsonl", "curves.png", "final/model.safetensors", "final/tokenizer.json",
                 "checkpoint/trainer_state.pt"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["algo"] == "grpo"
    extra = json.loads((run_dir / "checkpoint" / "extra.json").read_text())
    assert extra["step"] == 2

    out = _grpo_math(run_dir, address, "--driver.steps=3", "--resume")
    assert "[resume] continuing at step 2" in out.stdout
    assert "[bootstrap]" not in out.stdout                   # the bootstrapped policy is reused
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 1                              # exactly one more step
    assert json.loads((run_dir / "checkpoint" / "extra.json").read_text())["step"] == 3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_steps = sorted({r["step"] for r in rows if "reward_mean" in r})
    assert train_steps == [1, 2, 3], rows


def test_bootstrap_cache_is_reused_only_with_the_same_settings(tmp_path):
    from learner.rl_recipe import BootstrapConfig, BootstrapMismatch, bootstrap_policy

    final = tmp_path / "bootstrap" / "sft" / "final"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"")  # only its presence is looked at
    cfg = BootstrapConfig()
    with pytest.raises(BootstrapMismatch, match="no record of its settings"):
        bootstrap_policy(tmp_path, cfg, seed=0)                     # made by an older version
    record = tmp_path / "bootstrap" / "settings.json"
    record.write_text(json.dumps({**BootstrapConfig(sft_steps=1200).__dict__, "seed": 0}))
    with pytest.raises(BootstrapMismatch, match=r"sft_steps=1200 but this run asks for sft_steps=2000") as e:
        bootstrap_policy(tmp_path, cfg, seed=0)
    assert f"--init {final}" in str(e.value)
    with pytest.raises(BootstrapMismatch, match="seed=0 but this run asks for seed=1"):
        bootstrap_policy(tmp_path, BootstrapConfig(sft_steps=1200), seed=1)
    assert bootstrap_policy(tmp_path, BootstrapConfig(sft_steps=1200), seed=0) == final
