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
import sys
from types import SimpleNamespace

import pytest
import torch

from learner.actor import LearnerActor
from learner.config import OptimConfig
from learner.learner import Learner
from learner.stages import GRPOStage, RLUpdateConfig
from minimind.config import MiniMindConfig, preset
from minimind.data import synthetic_math as sm
from minimind.data.datasets import RLPromptDataset
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import train_tokenizer
from reward.actor import RewardActor, RewardConfig
from reward.scorers import MathVerifierScorer
from minimind.generate import SamplingParams
from learner.group import LearnerGroup
from recipes.actors import ActorGroups, RewardGroup, RolloutGroup
from contract.batch import RolloutBatch
from recipes.driver import DriverConfig, RLDriver
from recipes.samplers import ShuffleSampler
from rl_helpers import run_grpo_math, train_rows
from rollout.worker import RolloutActor, RolloutConfig

CPU0 = {"num_cpus": 0}                                  # everything fits a 2-core machine
RESTART = {"max_restarts": 3, "max_task_retries": 3}    # as recipes.math_rl.start_actors


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
    rcfg = RolloutConfig(SamplingParams(n=4, max_new_tokens=8, temperature=1.0))
    rollouts = [RolloutActor.options(name=f"t-rollout-{i}", **CPU0, **RESTART).remote(
        rcfg, cfg, str(tok_dir), device="cpu", worker_index=i, threads=1) for i in range(2)]
    reward = RewardActor.options(name="t-reward", **CPU0, **RESTART).remote(
        RewardConfig(timeout_s=None),
        components=[("math", MathVerifierScorer(), 0.0), ("first_even", FirstTokenEven(), 1.0)])
    ds = RLPromptDataset(sm.rl_records(problems[:40]))
    prompts = ds.driver_prompts()
    yield SimpleNamespace(groups=ActorGroups(LearnerGroup([learner]), RolloutGroup(rollouts), RewardGroup([reward])),
                          learner=learner, rollouts=rollouts, train=prompts[:32], eval=prompts[32:36])
    for a in [learner, *rollouts, reward]:
        ray.kill(a)
    ray.cloudpickle.unregister_pickle_by_value(this)


def _finite(stats: dict) -> None:
    for k, v in stats.items():
        assert isinstance(v, (int, float)) and math.isfinite(v), (k, v)


def _driver(a, cfg: DriverConfig, **kw) -> RLDriver:
    return RLDriver(cfg, a.groups, a.train, a.eval, ShuffleSampler(len(a.train), seed=0), seed=0, **kw)


def weights(a) -> dict:
    import ray
    return ray.get(a.learner.weights.remote(), timeout=60)


def test_grpo_steps_move_only_stats_to_the_driver(actors, monkeypatch):
    import ray

    import recipes.driver as driver_mod
    w0 = weights(actors)
    v0 = ray.get(actors.learner.version.remote())
    got: list[str] = []
    real_get = ray.get

    def recording_get(refs, *args, **kwargs):
        out = real_get(refs, *args, **kwargs)
        for v in (out if isinstance(out, list) else [out]):
            assert not isinstance(v, RolloutBatch), "the driver materialised a RolloutBatch"
            for part in (v if isinstance(v, tuple) else (v,)):   # an evaluation's (stats, uids, 1/0 per row)
                got.append(type(part).__name__)
                if isinstance(part, list):
                    assert all(isinstance(x, (int, float)) for x in part), part[:5]
        return out

    monkeypatch.setattr(driver_mod.ray, "get", recording_get)
    drv = _driver(actors, DriverConfig(steps=3, prompts_per_step=4))
    history = drv.run()
    ev = drv.evaluate()
    monkeypatch.undo()

    assert got and set(got) <= {"dict", "int", "float", "list"}, got
    assert len(history) == 3
    for i, s in enumerate(history):
        _finite(s)
        assert s["logprob_gap"] < 1e-5, s["logprob_gap"]     # learner's old logprobs == the rollout's
        assert s["updates"] == 2 and s["rows"] == 16.0      # 4 prompts x G=4, epochs 1 x minibatches 2
        assert s["version"] == i + 1 and s["staleness"] == 0.0
        assert "kl" in s and "entropy" in s and "accuracy" in s and s["refills"] == 0
    assert ray.get(actors.learner.version.remote()) == v0 + 6
    w1 = weights(actors)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    levels = {f"eval_accuracy_d{d}" for d in (1, 2, 3, 4)}     # the built-in prompts name their difficulty
    assert set(ev) == {"eval_accuracy", "eval_reward", "eval_response_length"} | levels
    assert ev["eval_response_length"] > 0
    ev = drv.evaluate(samples=2)
    assert {"eval_accuracy", "eval_sampled_accuracy", "eval_sampled_response_length"} <= set(ev)
    assert "eval_sampled_pass_at_4" not in ev     # two samples: pass@k only where k samples exist


def test_off_policy_runs_and_reports_staleness(actors):
    drv = _driver(actors, DriverConfig(steps=3, prompts_per_step=4, off_policy=True))
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

    drv = _driver(actors, DriverConfig(steps=3, prompts_per_step=4), on_step=kill_after_first)
    history = drv.run()
    assert killed == [1] and len(history) == 3
    for s in history:
        _finite(s)
        assert s["rows"] == 16.0 and s["logprob_gap"] < 1e-5
    assert _pid(actors.rollouts[0]) != pid0               # a new process answered after the kill


# ----------------------------------------------------------------------------- end to end
PEAK_MB_BOUND = 800


@pytest.mark.slow
def test_grpo_math_end_to_end_exact_resume_and_seed(ray_local, tmp_path):
    """The real script: bootstrap, evaluate, train, checkpoint every step. A run stopped after step 2
    and resumed reproduces the uninterrupted run's metrics step for step (prompt order, rollout seeds
    per worker and call, minibatch order and the learner are all restored), and with the data and
    the starting policy fixed, --seed changes the run (it reaches the sampler and the rollouts)."""
    address = ray_local.get_runtime_context().gcs_address
    data = sm.write_jsonl(sm.rl_records(sm.generate_problems(24, seed=5, split="train")), tmp_path / "rl.jsonl")
    # the lr schedule spans --optim.total-steps (default: the run's --driver.steps): fixed here so that
    # the run stopped after 2 steps is the same run as the one that goes to 3
    # evaluations between steps have seed streams of their own: they must not shift the training rollouts
    # --rollout.max-rows=4: the 8-prompt evaluations go through the engine in chunks, as 1,000-prompt ones do
    same = [f"--dataset={data}", f"--test-dataset={data}", "--optim.total-steps=3", "--driver.eval-every=1",
            "--rollout.max-rows=4"]
    full = tmp_path / "full"
    run_grpo_math(full, address, "--driver.steps=3", *same)
    for name in ("summary.json", "metrics.jsonl", "curves.png", "final/model.safetensors", "final/tokenizer.json",
                 "checkpoint/trainer_state.pt"):
        assert (full / name).is_file(), name
    summary = json.loads((full / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["algo"] == "grpo"
    assert json.loads((full / "checkpoint" / "extra.json").read_text())["step"] == 3
    assert set(summary["peak_memory_mb"]) == {"driver", "learner", "rollout-0", "rollout-1", "reward-0"}
    # every process's peak (ru_maxrss) within the Ray + torch baseline plus what a tiny policy needs
    # (measured: driver 522 MB with the bootstrap in it, learner 426, rollouts 348, reward 325)
    assert max(summary["peak_memory_mb"].values()) < PEAK_MB_BOUND, summary["peak_memory_mb"]

    # the same command again is refused (nothing overwritten); --overwrite with a missing dataset never
    # starts, so the folder stays as it was, the bootstrap cache included
    files = {p: p.read_bytes() for p in full.rglob("*") if p.is_file()}
    again = run_grpo_math(full, address, "--driver.steps=3", *same, ok=False)
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr, again.stderr
    gone = run_grpo_math(full, address, "--overwrite", f"--dataset={tmp_path / 'nope.jsonl'}", ok=False)
    assert gone.returncode == 2 and "nope.jsonl" in gone.stderr, gone.stderr
    assert {p: p.read_bytes() for p in full.rglob("*") if p.is_file()} == files

    same.append(f"--init={full / 'bootstrap' / 'sft' / 'final'}")
    part = tmp_path / "part"
    run_grpo_math(part, address, "--driver.steps=2", *same)
    out = run_grpo_math(part, address, "--driver.steps=3", "--resume", *same)
    assert "[resume] continuing at step 2" in out.stdout
    resumed = json.loads((part / "summary.json").read_text())
    assert (resumed["steps"], resumed["steps_this_process"]) == (3, 1)
    assert resumed["accuracy_before"] == summary["accuracy_before"]       # the run's start, not the checkpoint's
    assert json.loads((part / "checkpoint" / "extra.json").read_text())["step"] == 3
    assert [r["step"] for r in train_rows(part)] == [1, 2, 3]
    assert train_rows(part) == train_rows(full)

    # two learner ranks (gloo), stopped after step 2 and resumed on ONE: the same run as the one-learner
    # run, step for step (float rounding apart: the ranks sum in another order). Two ranks resuming a
    # checkpoint is what a restart after a dead rank does (test_ray_lifetime.py)
    ranks = tmp_path / "ranks"
    run_grpo_math(ranks, address, "--driver.steps=2", "--learner.world-size=2", *same)
    assert [r["rank"] for r in json.loads((ranks / "learner_ranks.json").read_text())] == [0, 1]
    run_grpo_math(ranks, address, "--driver.steps=3", "--resume", *same)
    rows, ref = train_rows(ranks), train_rows(full)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"allreduce_seconds_rank0", "allreduce_seconds_rank1"} <= set(rows[1]) and "allreduce_seconds_rank1" not in rows[2]
    # each rank trained one of the step's two groups (two rollout workers, one prompt each: round-robin)
    assert [(r["rows_rank0"], r["rows_rank1"], r["rows"]) for r in rows[:2]] == [(2.0, 2.0, 4.0)] * 2
    for got, want in zip(rows, ref):
        got = {k: v for k, v in got.items() if "_rank" not in k}
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)

    other = tmp_path / "seed1"
    run_grpo_math(other, address, "--driver.steps=1", "--eval-size=0", "--seed=1", *same)
    assert train_rows(other)[0] != train_rows(full)[0]


def test_bootstrap_cache_is_reused_only_with_the_same_settings(tmp_path):
    from recipes.bootstrap import BootstrapMismatch, bootstrap_policy
    from recipes.rl_config import BootstrapConfig

    final = tmp_path / "bootstrap" / "sft" / "final"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"")  # only its presence is looked at
    cfg = BootstrapConfig()
    with pytest.raises(BootstrapMismatch, match="no record of its settings"):
        bootstrap_policy(tmp_path, cfg, seed=0)                     # made by an older version
    record = tmp_path / "bootstrap" / "settings.json"
    record.write_text(json.dumps({**BootstrapConfig(sft_steps=1200).__dict__, "seed": 0}))
    with pytest.raises(BootstrapMismatch, match=rf"sft_steps=1200 but this run asks for sft_steps={cfg.sft_steps}") as e:
        bootstrap_policy(tmp_path, cfg, seed=0)
    assert f"--init {final}" in str(e.value)
    with pytest.raises(BootstrapMismatch, match="seed=0 but this run asks for seed=1"):
        bootstrap_policy(tmp_path, BootstrapConfig(sft_steps=1200), seed=1)
    assert bootstrap_policy(tmp_path, BootstrapConfig(sft_steps=1200), seed=0) == final
