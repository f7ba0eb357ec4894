"""experiments/grpo_tools.py end to end in a subprocess with tiny settings: bootstrap (with tool chats
in its pretraining text and tokenizer), tool-format SFT, multi-turn GRPO with the calculator on Ray,
evaluation with and without the tool; the outputs and the closing table are there. Then `--loss dapo`
and `--loss dr_grpo` from that run's tool-SFT policy: their lengths are the episode budget."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--no-dashboard", "--no-progress", "--threads=1", "--rollout.sampling.n=2",
        "--rollout.sampling.max-new-tokens=6", "--env.max-turns=2", "--env.max-total-tokens=24",
        "--driver.prompts-per-step=2", "--driver.steps=2", "--n-prompts=8")


def grpo_tools(run_dir: Path, address: str, *extra: str) -> subprocess.CompletedProcess:
    """The script in its own process, joining the session's Ray."""
    args = [sys.executable, str(ROOT / "experiments" / "grpo_tools.py"), f"--run-dir={run_dir}", f"--address={address}",
            *TINY, *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(args, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def tool_run(ray_local, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The whole recipe once (bootstrap, tool SFT, GRPO): its run folder and output."""
    run_dir = tmp_path_factory.mktemp("tools") / "run"
    out = grpo_tools(run_dir, ray_local.get_runtime_context().gcs_address,
                     "--bootstrap.preset=tiny", "--bootstrap.n-train=60", "--bootstrap.pretrain-steps=1",
                     "--bootstrap.sft-steps=1", "--sft.steps=2", "--sft.batch-size=4", "--sft.n-tool=8",
                     "--sft.n-plain=4", "--sft.n-copy=4", "--sft.n-pretrain-chats=8", "--eval-size=2",
                     "--reward.extra-turn-penalty=0.05")
    return run_dir, out


@pytest.mark.slow
def test_grpo_tools_cli(tool_run):
    run_dir, out = tool_run
    assert "[tool-sft] 8 easy tool-use chats + 4 plain chats + 4 copy chats, 2 steps" in out.stdout
    sft_data = (run_dir / "tool_sft" / "data" / "sft.jsonl").read_text()
    assert sft_data.count("Repeat exactly: ") == 4 and sft_data.count('"tool_calls"') == 8
    assert "held-out HARD accuracy, with the calculator" in out.stdout
    assert "held-out HARD accuracy, without tools" in out.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2
    for when in ("eval_before", "eval_after"):
        for key in ("eval_accuracy", "notool_accuracy", "eval_tool_calls", "eval_turns"):
            assert key in summary[when], (when, key)
        assert summary[when]["eval_turns"] >= 1 and summary[when]["notool_turns"] == 1   # no tools: one turn
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward_mean" in r]
    assert len(train) == 2 and all(r["turns"] >= 1 and "tool_calls" in r for r in train)
    tok = json.loads((run_dir / "bootstrap" / "settings.json").read_text())
    assert "extra_texts" in tok                                      # tool chats reached the tokenizer's text
    for name in ("final/model.safetensors", "tool_sft/final/model.safetensors", "curves.png"):
        assert (run_dir / name).is_file(), name


@pytest.mark.slow
@pytest.mark.parametrize("loss, field", [("dapo", "overlong_max_len"), ("dr_grpo", "max_response_len")])
def test_length_losses_take_the_episode_budget(tool_run, ray_local, tmp_path, loss, field):
    """An episode's response is its turns and the observations between them, up to --env.max-total-tokens
    (24 here), while each turn stops at --rollout.sampling.max-new-tokens (6): DAPO's L_max and Dr.GRPO's
    normaliser are the episode's 24 (one turn's 6 punished or refused every episode that used a tool)."""
    run_dir = tmp_path / loss
    grpo_tools(run_dir, ray_local.get_runtime_context().gcs_address, f"--loss={loss}", "--sft.steps=0",
               f"--init={tool_run[0] / 'tool_sft' / 'final'}", "--eval-size=0", "--driver.checkpoint-every=0")
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["loss"] == loss and cfg[loss][field] == cfg["env"]["max_total_tokens"] == 24
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward_mean" in r] == [1, 2]
