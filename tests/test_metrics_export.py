"""During a short GRPO run the custom metrics reach Ray's Prometheus endpoint
(`http://127.0.0.1:<metrics-export-port>/metrics`) as `ray_minimind_<name>{run=...}` gauges.

The run is a subprocess driver with its own local Ray (`_metrics_export_port=<free port>`), so the
session's in-process Ray is untouched; it keeps the Ray session open a little after the last step
(MINIMIND_TEST_HOLD_S) while the test scrapes the endpoint."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what the README (docs/cluster_and_monitoring.md) promises a dashboard / Grafana user
EXPECTED = ["reward_mean", "accuracy", "kl", "entropy", "response_length", "tokens_per_second",
            "generate_seconds", "reward_seconds", "reference_seconds", "learn_seconds", "weight_sync_seconds"]

DRIVER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import ray
    import recipes.math_rl as rr
    from recipes.rl_config import GRPOMathConfig

    port = int(sys.argv[1])
    orig_shutdown = ray.shutdown

    def init_ray(*args, **kwargs):  # a local Ray that exports metrics on our port (dashboard off, as in tests)
        ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port=port,
                 runtime_env={{"env_vars": {{"OMP_WAIT_POLICY": "PASSIVE"}}}})

    def shutdown_later():  # hold the session open while the test scrapes the endpoint
        print("[test] run done, holding Ray", flush=True)
        time.sleep(float(os.environ.get("MINIMIND_TEST_HOLD_S", "20")))
        orig_shutdown()

    rr.init_ray = init_ray
    ray.shutdown = shutdown_later
    rr.cli_main(GRPOMathConfig, sys.argv[2:])
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            return r.read().decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_custom_metrics_are_exported_on_rays_metrics_endpoint(tmp_path):
    port = free_port()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(root=str(ROOT)))
    args = [sys.executable, str(script), str(port), f"--run-dir={tmp_path / 'run'}",
            "--bootstrap.preset=tiny", "--bootstrap.n-train=100", "--bootstrap.pretrain-steps=1",
            "--bootstrap.sft-steps=1", "--n-prompts=16", "--eval-size=4", "--no-progress", "--threads=1",
            "--rollout.sampling.n=2", "--rollout.sampling.max-new-tokens=8", "--driver.prompts-per-step=2",
            "--driver.steps=2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MINIMIND_TEST_HOLD_S="25", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # loopback only
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        out = []
        for line in proc.stdout:                       # wait for the run to finish its steps
            out.append(line)
            if "[test] run done" in line:
                break
        assert any("[test] run done" in x for x in out), "".join(out)[-5000:]
        want = {f"ray_minimind_{k}" for k in EXPECTED}
        deadline, text, missing = time.time() + 20, "", want
        while time.time() < deadline:
            text = scrape(port)
            missing = {m for m in want if not any(line.startswith(m + "{") for line in text.splitlines())}
            if not missing:
                break
            time.sleep(1)
        assert not missing, f"missing on :{port}/metrics: {sorted(missing)}\n" + \
            "\n".join(x for x in text.splitlines() if "minimind" in x)[:3000]
        line = next(x for x in text.splitlines() if x.startswith("ray_minimind_reward_mean{"))
        assert 'run="run"' in line                     # tagged with the run directory's name
    finally:
        proc.kill()
        proc.wait(timeout=30)
