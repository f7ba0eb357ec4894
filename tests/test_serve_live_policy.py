"""Live policy view: `grpo_math.py --serve` serves the policy on the run's Ray cluster while it trains
and pushes each new weights version to the replicas from the learner's weights ref (never a file);
the run ends only after the final version is loaded by every replica."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_grpo_math_serve_pushes_every_version_to_the_server(ray_local, tmp_path):
    from ray import serve as rayserve

    port = _free_port()
    args = [sys.executable, str(ROOT / "experiments" / "grpo_math.py"), f"--run-dir={tmp_path / 'run'}",
            f"--address={ray_local.get_runtime_context().gcs_address}", "--bootstrap.preset=tiny",
            "--bootstrap.n-train=100", "--bootstrap.pretrain-steps=1", "--bootstrap.sft-steps=1", "--n-prompts=8",
            "--eval-size=0", "--no-dashboard", "--no-progress", "--threads=1", "--rollout.sampling.n=2",
            "--rollout.sampling.max-new-tokens=8", "--driver.prompts-per-step=2", "--driver.steps=2", "--serve",
            "--serve-every=1", f"--serve-port={port}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    finally:
        rayserve.shutdown()   # the run removed its app; this test leaves no Serve controller behind
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert f"[serve] chat with the policy while it trains: http://127.0.0.1:{port}" in out.stdout
    loaded = re.search(r"\[serve\] policy version (\d+) loaded by (\d+) replica", out.stdout)
    assert loaded and loaded.groups() == ("2", "1"), out.stdout[-2000:]
