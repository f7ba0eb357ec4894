"""A short real run through the recipes: pretrain -> resume -> SFT (+ held-out eval), tiny preset."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from learner.config import OptimConfig
from learner.metrics import read_metrics
from recipes.supervised_config import PretrainConfig, SFTConfig
from recipes.supervised import run_pretrain, run_sft
from minimind.checkpoint import load_model
from minimind.tokenizer import MiniMindTokenizer

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(preset="tiny", n_train=200, vocab_size=300, batch_size=8, seq_len=64,
              progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("e2e") / "pretrain"
    res = run_pretrain(PretrainConfig(run_dir=str(run_dir), steps=8, optim=OptimConfig(lr=3e-3, warmup_steps=2), checkpoint_every=4, **COMMON))
    return run_dir, res


def test_pretrain_writes_everything_and_learns(pretrained):
    run_dir, res = pretrained
    assert res["step"] == 8
    for f in ("metrics.jsonl", "curves.png", "config.json", "final/model.safetensors", "final/config.json",
              "final/tokenizer.json", "checkpoint/trainer_state.pt", "tokenizer/tokenizer.json",
              "data/pretrain.jsonl", "data/sft.jsonl"):
        assert (run_dir / f).is_file(), f
    losses = _losses(run_dir)
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3
    model = load_model(run_dir / "final")
    assert model.config.vocab_size == MiniMindTokenizer.load(run_dir / "final").vocab_size


def test_resume_continues_from_checkpoint(pretrained):
    run_dir, _ = pretrained
    with open(run_dir / "metrics.jsonl", "a") as f:   # as if it crashed after step 9, checkpoint at 8
        f.write('{"step": 9, "loss": 9.0}\n')
    res = run_pretrain(PretrainConfig(run_dir=str(run_dir), steps=12, optim=OptimConfig(lr=3e-3, warmup_steps=2), checkpoint_every=4, resume=True,
                                      **COMMON))
    assert res["step"] == 12
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert steps == list(range(1, 13))     # 9..12 appended once; 1..8 were not run again


def test_sft_from_pretrain_then_eval(pretrained, tmp_path, capsys):
    pt_dir, _ = pretrained
    sft_dir = tmp_path / "sft"
    res = run_sft(SFTConfig(run_dir=str(sft_dir), init=str(pt_dir / "final"), steps=8, optim=OptimConfig(lr=3e-3, warmup_steps=2),
                            eval_n=8, eval_every=4, max_new_tokens=12, **COMMON))
    assert res["step"] == 8
    for f in ("metrics.jsonl", "curves.png", "final/model.safetensors", "final/tokenizer.json", "eval.json"):
        assert (sft_dir / f).is_file(), f
    # the tokenizer came with the init checkpoint: none was trained here
    assert not (sft_dir / "tokenizer").exists()
    assert MiniMindTokenizer.load(sft_dir / "final") == MiniMindTokenizer.load(pt_dir / "final")
    losses = _losses(sft_dir)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    ev = json.loads((sft_dir / "eval.json").read_text())
    assert ev["n"] == 8 and 0.0 <= ev["accuracy"] <= 1.0 and res["eval"]["accuracy"] == ev["accuracy"]
    # the held-out curve (every 4 updates) ends at the last update: the report is that point, answered once
    points = [r for r in read_metrics(sft_dir / "metrics.jsonl") if "eval_accuracy" in r]
    assert [r["step"] for r in points] == [4, 8]
    assert points[-1]["eval_accuracy"] == ev["accuracy"]
    assert {f"eval_accuracy_d{d}": v for d, v in ev["by_difficulty"].items()} == \
        {k: v for k, v in points[-1].items() if k.startswith("eval_accuracy_d")}
    reports = [line for line in capsys.readouterr().out.splitlines() if "held-out exact-match accuracy" in line]
    assert len(reports) == 1 and reports[0].endswith("the held-out curve's last point"), reports


@pytest.mark.slow
def test_sft_on_two_learner_ranks_is_the_one_learner_run_and_resumes_on_one(pretrained, tmp_path):
    """`experiments/sft.py --learner.world-size 2` (two Ray actors, gloo): each rank trains its half of
    every batch, and the run is the one-learner run (losses, gradient norms), its metrics and checkpoint
    written once. That checkpoint, resumed by ONE learner, ends where the one-learner run ends."""
    pt_dir, _ = pretrained
    one, part = tmp_path / "one", tmp_path / "part"
    settings = dict(init=str(pt_dir / "final"), eval_n=0, checkpoint_every=4, **COMMON)
    optim = dict(lr=3e-3, warmup_steps=2, micro_batch_size=3, total_steps=6)
    run_sft(SFTConfig(run_dir=str(one), steps=6, optim=OptimConfig(**optim), **settings))
    flags = [f"--init={pt_dir / 'final'}", "--eval-n=0", "--checkpoint-every=4", "--preset=tiny", "--n-train=200",
             "--vocab-size=300", "--batch-size=8", "--seq-len=64", "--no-progress",
             *[f"--optim.{k.replace('_', '-')}={v}" for k, v in optim.items()]]
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "sft.py"), f"--run-dir={part}", "--steps=4",
                          "--learner.world-size=2", *flags], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "[learner] 2 ranks" in out.stdout
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]                  # one writer: each step once
    assert "learn_seconds_rank1" in b[0] and "allreduce_seconds" in b[0]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a[:4]], rel=1e-5), key
    run_sft(SFTConfig(run_dir=str(part), steps=6, optim=OptimConfig(**optim), resume=True, **settings))
    b = read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    w1, w2 = load_file(one / "final" / "model.safetensors"), load_file(part / "final" / "model.safetensors")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
