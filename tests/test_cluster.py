"""cluster.yaml passes Ray's own cluster-config validation offline (what `ray up` checks before it
contacts any provider), its on-prem `local` variant does too, broken copies fail; and a real
two-node Ray cluster on this machine runs GRPO with the learner and the rollout worker on
different nodes (scripts/multinode_demo.py, in subprocesses: the session's in-process Ray is untouched)."""
from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"

jsonschema = pytest.importorskip("jsonschema")  # Ray's validation uses it (a Ray dependency)
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def check(raw: dict) -> dict:
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    return cfg


# ----------------------------------------------------------------------------- cluster.yaml
def test_cluster_yaml_validates_with_rays_own_validation():
    cfg = check(load())
    assert cfg["head_node_type"] == "head"
    types = cfg["available_node_types"]
    assert set(types) == {"head", "gpu_worker"}
    assert types["head"]["max_workers"] == 0 and types["gpu_worker"]["min_workers"] >= 1
    setup = " ".join(cfg["setup_commands"])
    assert "torch==" in setup and "pip install -e ." in setup            # installs this project
    assert cfg["file_mounts"] == {"~/minimind-rl": "."}
    assert {"runs/", "checkpoints/", ".git/"} <= set(cfg["rsync_exclude"])
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--metrics-export-port" in head_start


def test_onprem_local_provider_variant_validates():
    """The on-prem variant documented in cluster.yaml's header: `local` provider with head_ip and
    worker_ips, no node types (Ray derives a single one from the IPs)."""
    raw = load()
    for key in ("available_node_types", "head_node_type", "head_setup_commands", "max_workers"):
        raw.pop(key)
    raw["provider"] = {"type": "local", "head_ip": "10.0.0.10", "worker_ips": ["10.0.0.11", "10.0.0.12"]}
    raw["auth"] = {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_rsa"}
    cfg = check(raw)
    (node_type,) = cfg["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == 2
    assert cfg["head_node_type"] in cfg["available_node_types"]


@pytest.mark.parametrize("breakage", ["missing head node type", "unknown head node type", "unknown field",
                                      "min_workers above max_workers", "provider without type"])
def test_broken_copies_fail_validation(breakage):
    raw = load()
    if breakage == "missing head node type":
        raw["available_node_types"].pop("head")
    elif breakage == "unknown head node type":
        raw["head_node_type"] = "nope"
    elif breakage == "unknown field":
        raw["available_node_types"]["gpu_worker"]["gpus_please"] = 8
    elif breakage == "min_workers above max_workers":
        raw["available_node_types"]["gpu_worker"]["min_workers"] = 10
    else:
        raw["provider"].pop("type")
    with pytest.raises(Exception):
        check(raw)


# ----------------------------------------------------------------------------- two nodes, one machine
def _demo_module():
    spec = importlib.util.spec_from_file_location("multinode_demo", ROOT / "scripts" / "multinode_demo.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod            # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_two_node_cluster_runs_grpo_with_nodes_pinned_and_learner_ranks_spread(tmp_path, monkeypatch):
    """One run pins the learner to the head node and the rollouts to the worker node (custom resources);
    a second one trains with two learner ranks spread over the two nodes (gloo across the nodes)."""
    # as with a virtualenv used without activation: Ray's command line is not on PATH
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    demo = _demo_module()
    cluster = demo.LocalCluster(tempfile.mkdtemp(prefix="mmray", dir="/tmp"))  # short: unix socket paths
    try:
        cluster.start(cpus_per_node=1)
        assert len(cluster.pids()) >= 4                          # gcs, 2 raylets, ... (what stop() ends)
        run_dir = tmp_path / "run"
        out = subprocess.run(demo.grpo_args(cluster.address, run_dir), env=demo.ray_env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
        where = demo.parse_placement(out.stdout)
        assert "[ray] 2 nodes;" in out.stdout, out.stdout[-3000:]
        assert where["learner"] != where["rollout-0"], out.stdout   # different nodes
        line = next(x for x in out.stdout.splitlines() if "placement:" in x)
        assert "learner=" in line and "(head_node)" in line.split("learner=")[1].split()[0]
        assert "(worker_node)" in line.split("rollout-0=")[1].split()[0]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["steps"] == 2

        spread = tmp_path / "spread"
        out = subprocess.run(demo.grpo_args(cluster.address, spread, learner_ranks=2,
                                            init=run_dir / "bootstrap" / "sft" / "final"), env=demo.ray_env(),
                             cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
        ranks = json.loads((spread / "learner_ranks.json").read_text())
        assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["node_id"] != ranks[1]["node_id"], ranks
        where = demo.parse_placement(out.stdout)
        assert where["learner"] != where["learner-1"], out.stdout
        assert json.loads((spread / "summary.json").read_text())["steps"] == 2
    finally:
        pids = cluster.pids()
        cluster.stop()
    assert not cluster.pids(), "processes of the test cluster survived stop()"
    assert not Path(cluster.temp_dir).exists()
    assert pids                                                   # stop() had something to end
