"""bench/gpu_check.py at toy sizes on CPU (`--device cpu --preset tiny`), so the script a lent GPU runs does
not rot: the same sections and code, run as the lead runs it (a subprocess printing one JSON object)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_check(*args: str, pythonpath: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([*pythonpath, str(ROOT)])
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def report(*args: str, pythonpath: tuple[str, ...] = ()) -> dict:
    out = run_check("--device", "cpu", "--preset", "tiny", *args, pythonpath=pythonpath)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 1, out.stdout[-2000:]   # stdout is the one JSON object, progress is on stderr
    return json.loads(lines[0])


def errors(node, path="") -> list[str]:
    """Every "error" anywhere in the report, with where it is."""
    if isinstance(node, dict):
        found = [f"{path}: {node['error']}"] if "error" in node else []
        return found + [e for k, v in node.items() for e in errors(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [e for i, v in enumerate(node) for e in errors(v, f"{path}[{i}]")]
    return []


def positive(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


@pytest.fixture
def no_ray(tmp_path) -> str:
    """A folder whose `ray` package fails to import as a missing one does: the GPU machine has no Ray."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'ray' (hidden by the test)\", name='ray')\n")
    return str(tmp_path)


def test_every_section_reports_numbers_and_no_section_needs_ray(no_ray):
    r = report(pythonpath=(no_ray,))
    assert errors(r) == []
    assert r["device"] == "cpu" and r["preset"] == "tiny" and r["sizes"]["matmul_n"] > 0
    assert set(r["budget_s"]) == {"matmul", "train", "sample", "rl", "total"} and "mfu" in r["formulas"]

    mm = r["matmul"]
    assert mm["dtype"] == "float32" and positive(mm["peak_tflops"], *mm["trial_tflops"])
    assert mm["peak_tflops"] == max(mm["trial_tflops"])

    rows = r["train"]["results"]
    assert [x["preset"] for x in rows] == r["sizes"]["train_presets"] and not r["train"]["skipped"]
    for x in rows:
        assert positive(x["tokens_per_s"], x["mfu"], x["achieved_tflops"], x["flops_per_token"],
                        x["peak_memory_mb"], x["seconds_per_step"], x["loss_first"], x["loss_last"])
        assert x["mfu"] == pytest.approx(x["achieved_tflops"] / mm["peak_tflops"], rel=1e-2, abs=1e-4)

    sample = r["sample"]
    cases = r["sizes"]["sample_cases"]
    assert [x["batch"] for x in sample["results"]] == [p * g for p, g in cases] and not sample["skipped"]
    for x in sample["results"]:
        assert positive(x["ours_tok_s"], x["hf_tok_s"], x["ratio"]) and x["new_tokens"] == r["sizes"]["new_tokens"]
    gap = sample["logprob_gap"]
    assert gap["tokens"] == r["sizes"]["gap_rows"] * r["sizes"]["new_tokens"]
    # fp32 on CPU: the engine's logprobs are the learner's up to float rounding (DESIGN: ~1e-5)
    assert 0 <= gap["mean_abs"] < 1e-5 and 0 <= gap["max_abs"] < 1e-4

    assert r["rl"]["ray"] == "not installed" and r["ray"] == "not installed"


@pytest.mark.slow
def test_rl_section_runs_the_grpo_recipe_and_reports_the_step_breakdown():
    ray = pytest.importorskip("ray")
    r = report("--sections", "rl")
    assert errors(r) == []
    assert all(r[s] == {"skipped": "not in --sections"} for s in ("matmul", "train", "sample"))
    rl = r["rl"]
    assert rl["ray"] == r["ray"] == ray.__version__ and "--device=cpu" in rl["flags"]
    assert set(rl["placement"]) == {"learner", "rollout", "reward"}
    steps = rl["breakdown"]["steps"]
    assert [s["step"] for s in steps] == [1, 2] and rl["summary"]["steps"] == 2
    for s in steps:
        assert positive(s["step_seconds"], s["generate_seconds"], s["learn_seconds"], s["new_tokens"])
        assert s["other_seconds"] == pytest.approx(
            s["step_seconds"] - s["generate_seconds"] - s["weight_sync_seconds"] - s["reward_seconds"]
            - s["learn_seconds"], abs=1e-4)
    assert rl["breakdown"]["median_after_first"]["step_seconds"] == steps[1]["step_seconds"]
    assert positive(*rl["summary"]["peak_memory_mb"].values())


@pytest.mark.parametrize("args,message", [
    (("--device", "cpu", "--sections", "matmul,nope"), "--sections nope: choose from matmul,train,sample,rl"),
    (("--device", "cuda"), "--device cuda: torch"),
])
def test_bad_flags_exit_2_with_one_line(args, message):
    if args[1] == "cuda":
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    out = run_check(*args)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr
