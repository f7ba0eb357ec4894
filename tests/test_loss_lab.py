"""The loss lab (experiments/loss_lab.py) on a tiny model: each loss's gradient and loss from the lab are
the ones `Learner.train_step` makes with that loss's stage, the cosine of a loss with itself is 1, the
lab's clip shares are the loss modules' own, and a batch recorded by a real run
(`experiments/grpo_math.py --record-batches`) and replayed gives that run's step loss exactly.
A random reward model makes every group's rewards differ, so every loss has a gradient."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from contract.batch_io import load_batch, save_batch
from learner.config import OptimConfig
from learner.losses import ClipConfig, GRPOLoss
from minimind.checkpoint import load_model, save_model
from minimind.config import preset
from minimind.data import synthetic_math as sm
from minimind.data.datasets import RLPromptDataset
from minimind.generate import SamplingParams
from minimind.model import MiniMindForCausalLM, MiniMindScoreModel
from minimind.tokenizer import MiniMindTokenizer, train_tokenizer
from recipes.lab.analysis import cosine_matrix
from recipes.lab.config import ALL_LOSSES, LabConfig
from recipes.lab.recorded import RecordedRun
from recipes.lab.replay import replay_step
from recipes.lab.roster import lab_learner, lab_stage
from recipes.lab.scoring import batch_log_softmax
from recipes.lab.start import LabStart
from recipes.lab.trial import run_trial
from reward.actor import RewardConfig, RewardWorker
from rollout.worker import RolloutConfig, RolloutWorker

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny policy with a tokenizer trained on the built-in math (a folder --init takes), and a
    random reward model on the same tokens (--reward.rm-path): rewards that differ within every group."""
    root = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(sm.pretrain_texts(sm.generate_problems(200, seed=0, split="train"), facts=False),
                          vocab_size=320)
    torch.manual_seed(0)
    policy = MiniMindForCausalLM(preset("tiny", vocab_size=tok.vocab_size))
    save_model(policy, root / "policy")
    tok.save(root / "policy")
    rm = MiniMindScoreModel(policy.config)
    torch.nn.init.normal_(rm.score.weight, std=0.5)
    save_model(rm, root / "rm")
    return root


def _start(tiny: Path, n_prompts: int = 4, n: int = 4) -> LabStart:
    """What the lab starts from with a fresh batch: sampled by a rollout worker, scored by the reward worker."""
    tok = MiniMindTokenizer.load(tiny / "policy")
    policy = load_model(tiny / "policy", dtype=torch.float32)
    prompts = [dict(p, uid=i) for i, p in enumerate(RLPromptDataset(
        sm.rl_records(sm.generate_problems(n_prompts, seed=3, split="train")), tokenizer=tok).driver_prompts())]
    worker = RolloutWorker(RolloutConfig(SamplingParams(n=n, max_new_tokens=10)), policy.config,
                           str(tiny / "policy"), device="cpu")
    batch = worker.generate(prompts, [policy.state_dict()], 0, seed=7)
    batch = RewardWorker(RewardConfig(rm_path=str(tiny / "rm"), rm_weight=1.0, timeout_s=None)).score(batch)
    return LabStart(batch, policy, copy.deepcopy(policy), tiny / "policy", 10, {"kind": "test"})


def _cfg(updates: int, lr: float = 1e-3, **losses) -> LabConfig:
    # micro-batches of 5 rows: the accumulation over micro-batches is part of what must agree
    return LabConfig(updates=updates, probe_size=0, **losses,
                     optim=OptimConfig(lr=lr, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, grad_clip=0.0,
                                       micro_batch_size=5))


def _trial_and_step(name: str, cfg: LabConfig, start, ref_log_sm):
    """Loss `name` run by the lab, and the same loss through the learner's own training step from the
    same weights -> (the lab's trial, that learner, its step's stats)."""
    stage = lab_stage(name, cfg, start)
    trial = run_trial(name, stage, lab_learner(stage, cfg, start), start.batch, ref_log_sm)
    stage = lab_stage(name, cfg, start)
    learner = lab_learner(stage, cfg, start)
    return trial, learner, learner.train_step(start.batch)


def test_every_loss_gradient_is_the_learners_and_a_loss_has_cosine_one_with_itself(tiny):
    start = _start(tiny)
    assert float(start.batch.rewards.std()) > 0 and len(set(start.batch.rewards.tolist())) == len(start.batch)
    cfg = _cfg(updates=1)
    ref_log_sm = batch_log_softmax(start.reference, start.batch)
    grads = {}
    for name in ALL_LOSSES:
        trial, learner, stats = _trial_and_step(name, cfg, start, ref_log_sm)
        theirs = torch.cat([p.grad.flatten() for p in learner.model.parameters()])
        assert trial.grad.norm() > 0, name
        torch.testing.assert_close(trial.grad, theirs, rtol=1e-6, atol=1e-9, msg=name)
        assert trial.loss == pytest.approx(stats["loss"], rel=1e-6, abs=1e-9), name
        # the per-token weights are the loss's: zero off the responses, and they make the gradient
        assert float((trial.token_weights * (1 - start.batch.response_mask)).abs().max()) == 0.0, name
        grads[name] = trial.grad
    again = run_trial("grpo", lab_stage("grpo", cfg, start), lab_learner(lab_stage("grpo", cfg, start), cfg, start),
                      start.batch, ref_log_sm)
    m = cosine_matrix({**grads, "grpo again": again.grad})
    for i in range(len(m)):
        assert m[i][i] == pytest.approx(1.0, abs=1e-6)
        for j in range(len(m)):
            assert m[i][j] == pytest.approx(m[j][i], abs=1e-7)
    assert m[0][-1] == pytest.approx(1.0, abs=1e-6)            # the same loss twice: the same direction
    assert min(min(row) for row in m) < 0.999                  # and the losses do differ


def test_clip_shares_are_the_loss_modules_own(tiny):
    """Two updates with a large step: the ratio leaves every trust region; the lab's low + high (+ dual) shares
    of clipped tokens are the clip_frac (dual_clip_frac) the loss modules report through the learner."""
    start = _start(tiny)
    cfg = _cfg(updates=2, lr=1e-2, grpo=GRPOLoss(clip=ClipConfig(dual_clip=1.5)))
    ref_log_sm = batch_log_softmax(start.reference, start.batch)
    clipped = {}
    for name in ALL_LOSSES:
        trial, _, stats = _trial_and_step(name, cfg, start, ref_log_sm)
        mean = {s: sum(u[f"clip_{s}"] for u in trial.updates) / 2 for s in ("low", "high", "dual")}
        assert mean["low"] + mean["high"] == pytest.approx(stats["clip_frac"], abs=1e-6), name
        assert mean["dual"] == pytest.approx(stats.get("dual_clip_frac", 0.0), abs=1e-6), name
        assert trial.updates[0]["clip_low"] == trial.updates[0]["clip_high"] == 0.0, name   # ratio 1 at the start
        clipped[name] = mean
    both = {n: c["low"] + c["high"] for n, c in clipped.items()}
    assert clipped["grpo"]["dual"] > 0 and both["gspo"] > both["grpo"] > 0   # GSPO's range is 1e-3 wide, GRPO's 0.4


def test_batch_file_round_trip(tmp_path, tiny):
    batch = _start(tiny, n_prompts=2, n=2).batch
    back = load_batch(save_batch(batch, tmp_path / "b"))
    for name, value in vars(batch).items():
        got = getattr(back, name)
        assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value, name
    (tmp_path / "b" / "batch.json").write_text(json.dumps({**json.loads((tmp_path / "b" / "batch.json").read_text()),
                                                            "colour": 1}))
    with pytest.raises(ValueError, match="colour"):
        load_batch(tmp_path / "b")


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_recorded_step_replays_to_the_runs_loss(ray_local, tiny, tmp_path):
    """A real short GRPO run records its batches; each recorded step, trained again from its record by the
    run's own stage, gives the loss the run logged in metrics.jsonl, exactly; the lab takes a recorded
    batch and says the same."""
    address = ray_local.get_runtime_context().gcs_address
    run, record = tmp_path / "run", tmp_path / "record"
    args = [f"--run-dir={run}", f"--address={address}", f"--init={tiny / 'policy'}", "--n-prompts=16",
            "--eval-size=0", "--no-dashboard", "--no-progress", "--rollout-workers=2", "--threads=1",
            "--rollout.sampling.n=2", "--rollout.sampling.max-new-tokens=8", "--driver.prompts-per-step=2",
            "--driver.steps=2", f"--reward.rm-path={tiny / 'rm'}", "--reward.rm-weight=1",
            f"--record-batches={record}"]
    out = _script("grpo_math.py", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "reward_mean" in r]
    recorded = RecordedRun.open(record)
    assert type(recorded.config).__name__ == "GRPOMathConfig" and recorded.config.policy_loss.kl.coef == 0.01
    norms = [r["grad_norm"] for r in logged if "reward_mean" in r]
    assert len(losses) == 2 and min(norms) > 0
    for n, (loss, norm) in enumerate(zip(losses, norms), start=1):
        replayed = replay_step(recorded, recorded.step(n))
        assert (replayed["loss"], replayed["grad_norm"]) == (loss, norm), n

    # another run recording into the same folder would mix its records with these
    again = _script("grpo_math.py", *args, f"--run-dir={tmp_path / 'run2'}", cwd=tmp_path)
    assert again.returncode == 2 and "--record-batches" in again.stderr and len(again.stderr.splitlines()) == 1

    lab = tmp_path / "lab"
    out = _script("loss_lab.py", f"--record={record}", "--step=2", f"--out-dir={lab}", "--updates=1",
                  "--probe-size=0", "--threads=1", "--losses=grpo,gspo", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    report = json.loads((lab / "loss_lab.json").read_text())
    assert report["replay"]["replayed_loss"] == report["replay"]["run_loss"] == losses[1]
    assert list(report["losses"]) == ["grpo", "gspo"] and report["origin"]["step"] == 2
    assert {"engine", "int8", "micro_batch_1", "temperature", "top_p"} <= set(
        json.loads((lab / "mismatch.json").read_text())["sources"])
    assert (lab / "loss_lab.png").stat().st_size > 0 and (lab / "mismatch.png").stat().st_size > 0
    bad = _script("loss_lab.py", f"--record={tmp_path}", f"--out-dir={tmp_path / 'lab2'}", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "run.json" in bad.stderr
