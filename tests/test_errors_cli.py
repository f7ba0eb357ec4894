"""What a user sees when inputs do not fit, through the scripts themselves: one line on stderr that
names the problem and the flag that fixes it, exit status 2, no traceback, and nothing trained."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minimind.config import preset
from minimind.data import synthetic_math as sm
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MINIMIND_DEBUG"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def minimind_pth(tmp_path_factory) -> Path:
    """A MiniMind-style .pth (a bare state dict, vocab 6400, no tokenizer beside it)."""
    d = tmp_path_factory.mktemp("pth")
    torch.manual_seed(0)
    model = MiniMindForCausalLM(preset("tiny", vocab_size=6400))
    torch.save(model.state_dict(), d / "full_sft_512.pth")
    return d / "full_sft_512.pth"


def test_sft_from_a_pth_without_its_tokenizer_stops_before_training(minimind_pth, tmp_path):
    out = _script("sft.py", f"--init={minimind_pth}", f"--run-dir={tmp_path / 'run'}", "--steps=1",
                  "--no-progress", cwd=tmp_path)
    line = _one_line_error(out)
    assert "tokenizer" in line and "--tokenizer" in line
    assert not (tmp_path / "run" / "final").exists()


def test_a_tokenizer_that_does_not_fit_the_model_is_an_error_naming_both_sizes(minimind_pth, tmp_path):
    tok = train_tokenizer(sm.pretrain_texts(sm.generate_problems(100, seed=0, split="train")), vocab_size=300)
    tok.save(tmp_path / "tok")
    out = _script("sft.py", f"--init={minimind_pth}", f"--tokenizer={tmp_path / 'tok'}",
                  f"--run-dir={tmp_path / 'run'}", "--steps=1", "--no-progress", cwd=tmp_path)
    line = _one_line_error(out)
    assert f"{tok.vocab_size} tokens" in line and "vocab_size is 6400" in line and "--tokenizer" in line
    assert not (tmp_path / "run" / "final").exists()


def test_missing_data_file_is_one_line(tmp_path):
    out = _script("pretrain.py", f"--data={tmp_path / 'nope.jsonl'}", f"--run-dir={tmp_path / 'run'}",
                  "--steps=1", "--no-progress", "--preset=tiny", cwd=tmp_path)
    assert "nope.jsonl" in _one_line_error(out)
