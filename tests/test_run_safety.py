"""Nothing lost and errors a person can read, through the scripts: a run folder holding an earlier run
is refused without --resume / --overwrite, a failed start leaves it as it was, --resume finds what an
interrupted save left, and each input a user can get wrong ends in one line naming it (exit 2).

The cases call the script's own main(argv) in this process: the same path as the command line (parse,
run_or_exit, SystemExit(2), one line on stderr) without 8 s of imports per case; tests/test_errors_cli.py
runs the commands themselves."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset=tiny", "--n-train=50", "--batch-size=2", "--seq-len=32", "--no-progress"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name[:-3]}", ROOT / "experiments" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main(name: str, argv: list[str], capsys) -> tuple[int, str]:
    """experiments/<name> main(argv) in this process: (exit status, stderr)."""
    module = _load(name)
    capsys.readouterr()
    try:
        module.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _error_line(code: int, err: str) -> str:
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A finished 2-step pretrain run with a checkpoint every step (through main(), see _main)."""
    run = tmp_path_factory.mktemp("earlier") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _load("pretrain.py").main([f"--run-dir={run}", "--steps=2", "--checkpoint-every=1", *TINY])
    finally:
        torch.set_num_threads(n)
    return run


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_folder_with_an_earlier_run_is_refused_and_a_failed_start_changes_nothing(earlier_run, tmp_path, capsys):
    before = _snapshot(earlier_run)
    line = _error_line(*_main("pretrain.py", [f"--run-dir={earlier_run}", "--steps=1", *TINY], capsys))
    assert "--resume" in line and "--overwrite" in line and str(earlier_run) in line
    # --overwrite asked for, but the data has no usable line: the run never starts, the folder stays as it was
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n')
    line = _error_line(*_main("pretrain.py", [f"--run-dir={earlier_run}", "--overwrite",
                                              f"--data={tmp_path / 'bad.jsonl'}", "--steps=1", *TINY], capsys))
    assert "bad.jsonl" in line
    after = _snapshot(earlier_run)
    # only the report the error points to grew (appended: the earlier run's lines stay)
    assert {k for k in set(before) | set(after) if before.get(k) != after.get(k)} == {"skipped_lines.jsonl"}
    assert after["skipped_lines.jsonl"].startswith(before.get("skipped_lines.jsonl", b""))


def test_overwrite_replaces_the_earlier_run(earlier_run, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    shutil.copytree(earlier_run, run)
    code, err = _main("pretrain.py", [f"--run-dir={run}", "--overwrite", "--steps=1", *TINY], capsys)
    assert code == 0, err[-3000:]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert json.loads((run / "checkpoint" / "extra.json").read_text())["data"] is not None
    assert torch.load(run / "checkpoint" / "trainer_state.pt", weights_only=True)["step"] == 1


def test_resume_finds_the_checkpoint_an_interrupted_save_left_aside(earlier_run, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    shutil.copytree(earlier_run, run)
    # the state a crash leaves between moving the old checkpoint aside and renaming the new one in
    (run / "checkpoint").rename(run / "checkpoint.old")
    code, err = _main("pretrain.py", [f"--run-dir={run}", "--resume", "--steps=3", "--checkpoint-every=1", *TINY],
                      capsys)
    assert code == 0, err[-3000:]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def _bad_inputs(tmp: Path, earlier: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (argv for pretrain.py / sft.py, what the one line must say)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp / "folder").mkdir()
    (tmp / "empty.jsonl").write_text("")
    (tmp / "bad.jsonl").write_text('not json\n{"txt": "x"}\n')
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp / "wrong.parquet")
    trunc = shutil.copytree(earlier / "final", tmp / "trunc")
    (trunc / "model.safetensors").write_bytes((trunc / "model.safetensors").read_bytes()[:1000])
    badcfg = shutil.copytree(earlier / "final", tmp / "badcfg")
    (badcfg / "config.json").write_text('{"hidden_size": ')

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"w": Payload()}, tmp / "pickled.pth")
    bigger = shutil.copytree(earlier, tmp / "bigger")
    state = shutil.copytree(earlier, tmp / "state")
    (state / "checkpoint" / "trainer_state.pt").write_bytes(b"PK\x03\x04 cut")
    return {
        "data is a folder": (["pretrain.py", f"--data={tmp / 'folder'}"], "is a folder"),
        "empty data file": (["pretrain.py", f"--data={tmp / 'empty.jsonl'}"], "the data file is empty"),
        "every line bad": (["pretrain.py", f"--data={tmp / 'bad.jsonl'}"], "every record is bad"),
        "parquet wrong columns": (["pretrain.py", f"--data={tmp / 'wrong.parquet'}"], "missing field 'text'"),
        "unknown preset": (["pretrain.py", "--preset=nope"], "unknown preset 'nope'"),
        "cuda without a GPU": (["pretrain.py", "--device=cuda"], "--device cuda"),
        "missing init": (["sft.py", f"--init={tmp / 'nope'}"], "no such checkpoint"),
        "truncated safetensors": (["sft.py", f"--init={trunc}"], "model.safetensors"),
        "bad config.json": (["sft.py", f"--init={badcfg}"], "config.json"),
        "pickled .pth": (["sft.py", f"--init={tmp / 'pickled.pth'}", f"--tokenizer={earlier / 'final'}"],
                         "pickled Python objects"),
        "another preset on resume": (["pretrain.py", f"--run-dir={bigger}", "--resume", "--preset=demo", "--steps=3"],
                                     "made with --preset tiny but this run asks for --preset demo: pass --preset tiny"),
        "truncated trainer state": (["pretrain.py", f"--run-dir={state}", "--resume", "--steps=3"],
                                    "truncated or corrupt"),
    }


CASES = ["data is a folder", "empty data file", "every line bad", "parquet wrong columns", "unknown preset",
         "cuda without a GPU", "missing init", "truncated safetensors", "bad config.json", "pickled .pth",
         "another preset on resume", "truncated trainer state"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda case needs a machine without a GPU")
@pytest.mark.parametrize("case", CASES)
def test_each_bad_input_is_one_line(case, earlier_run, tmp_path, capsys, one_thread):
    (script, *argv), expected = _bad_inputs(tmp_path, earlier_run)[case]
    if not any(a.startswith("--run-dir") for a in argv):
        argv.append(f"--run-dir={tmp_path / 'run'}")
    line = _error_line(*_main(script, [*TINY, "--steps=1", *argv], capsys))
    assert expected in line, line
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("value,expected", [("2.5", "expected an integer, got 2.5"),
                                            ("true", "expected an integer, got true"),
                                            ("[4, 8]", "expected an integer, got [4, 8]")])
def test_config_file_values_are_typed_like_flags(value, expected, tmp_path, capsys):
    (tmp_path / "cfg.json").write_text('{"steps": %s, "optim": {"lr": 0.001}}' % value)
    code, err = _main("pretrain.py", [f"--config={tmp_path / 'cfg.json'}", f"--run-dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and "--config: steps" in err and expected in err, err[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,expected", [("--eval-size=-5", "--eval-size=-5"),
                                           ("--rollout.sampling.max-new-tokens=0", "max_new_tokens=0"),
                                           ("--rollout.sampling.temperature=-1", "temperature=-1")])
def test_rl_values_that_cannot_run_stop_at_parse_time(flag, expected, tmp_path, capsys):
    code, err = _main("grpo_math.py", [flag, f"--run-dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and expected in err, err[-2000:]
    assert not (tmp_path / "run").exists()
