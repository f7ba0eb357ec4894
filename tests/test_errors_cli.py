"""What a user sees when inputs do not fit, through the scripts themselves: one line on stderr that
names the problem and the flag that fixes it, exit status 2, no traceback, and nothing trained. A
checkpoint that is truncated, not safetensors, or shaped otherwise than its config.json is refused by
the process the user started, before Ray or any actor or replica (the RL recipes, serve.py, chat.py).
A 10 MB line in a data file is cut before it is tokenized and reported (or dropped) as before."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minimind.checkpoint import save_model
from minimind.config import preset
from minimind.data import synthetic_math as sm
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MINIMIND_DEBUG"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *args], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


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


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """A tiny checkpoint folder (model, config.json, tokenizer) and, beside it, the weights of a bigger
    model of the same vocabulary."""
    d = tmp_path_factory.mktemp("policy")
    tok = train_tokenizer(sm.pretrain_texts(sm.generate_problems(100, seed=0, split="train")), vocab_size=300)
    torch.manual_seed(0)
    save_model(MiniMindForCausalLM(preset("tiny", vocab_size=tok.vocab_size)), d / "ok")
    tok.save(d / "ok")
    save_model(MiniMindForCausalLM(preset("demo", vocab_size=tok.vocab_size)), d / "bigger")
    return d


def _broken(policy: Path, kind: str, dest: Path) -> Path:
    """A copy of the policy folder whose model.safetensors is cut in half, random bytes, or another model's."""
    out = shutil.copytree(policy / "ok", dest)
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "random bytes": os.urandom(len(data)),
                         "wrong shapes": (policy / "bigger" / "model.safetensors").read_bytes()}[kind])
    return out


BROKEN = {"truncated": "truncated", "random bytes": "not a safetensors file",
          "wrong shapes": "(shapes of the model"}


@pytest.mark.parametrize("script,kind", [("grpo_math.py", "truncated"), ("serve.py", "random bytes"),
                                         ("chat.py", "wrong shapes")])
def test_a_broken_checkpoint_is_refused_before_any_actor_starts(script, kind, policy, tmp_path):
    """Every script takes its checkpoint through minimind.checkpoint.check_checkpoint (test_checkpoint.py
    goes through each kind of damage); one kind per script here."""
    ckpt = _broken(policy, kind, tmp_path / "ckpt")
    flag = "--init" if script == "grpo_math.py" else "--model"
    out = _script(script, f"{flag}={ckpt}", f"--run-dir={tmp_path / 'run'}", "--eval-size=0", "--no-progress",
                  cwd=tmp_path) if script == "grpo_math.py" else _script(script, f"{flag}={ckpt}", cwd=tmp_path)
    line = _one_line_error(out)
    assert str(ckpt / "model.safetensors") in line and BROKEN[kind] in line, line
    assert "[ray]" not in out.stdout and not (tmp_path / "run" / "checkpoint").exists()


def _ten_mb_line(tmp_path: Path, name: str, row: dict, good: list[dict]) -> Path:
    """good[0], `row` with a 10 MB field (line 2), then the rest of `good`."""
    f = tmp_path / name
    f.write_text("".join(json.dumps(r) + "\n" for r in [good[0], row, *good[1:]]))
    assert f.stat().st_size > 10_000_000
    return f


BIG = "12 + 34 = 46. " * 750_000


def test_a_10mb_prompt_is_reported_with_its_line(policy, tmp_path):
    good = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in ((1, 2), (3, 4), (5, 6))]
    data = _ten_mb_line(tmp_path, "rl.jsonl", {"prompt": BIG, "answer": "46"}, good)
    (tmp_path / "bad_test.jsonl").write_text('{"question": 1}\n')
    # the held-out file has no usable record: the run stops once the data is read, before Ray starts
    out = _script("grpo_math.py", f"--init={policy / 'ok'}", f"--dataset={data}",
                  f"--test-dataset={tmp_path / 'bad_test.jsonl'}", f"--run-dir={tmp_path / 'run'}", "--no-progress",
                  cwd=tmp_path)
    assert "bad_test.jsonl" in _one_line_error(out)
    skipped = [json.loads(x) for x in (tmp_path / "run" / "skipped_lines.jsonl").read_text().splitlines()]
    big = [s for s in skipped if s["source"] == str(data)]
    assert [s["location"] for s in big] == [f"{data}:2"] and "max_prompt_tokens=" in big[0]["reason"], big
    assert f"{data}: skipped 1 bad record(s), kept 3" in out.stderr


def test_a_10mb_chat_is_cut_before_tokenizing_and_dropped_as_before(policy, tmp_path):
    good = [{"conversations": [{"role": "user", "content": f"What is {a} + {b}?"},
                               {"role": "assistant", "content": str(a + b)}]} for a, b in ((1, 2), (3, 4), (5, 6))]
    row = {"conversations": [{"role": "user", "content": BIG}, {"role": "assistant", "content": "46"}]}
    data = _ten_mb_line(tmp_path, "sft.jsonl", row, good)
    out = _script("sft.py", f"--init={policy / 'ok'}", f"--data={data}", f"--run-dir={tmp_path / 'run'}",
                  "--steps=1", "--batch-size=2", "--seq-len=64", "--eval-n=0", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 conversation(s) dropped: no assistant token within max_len=64" in out.stderr, out.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
