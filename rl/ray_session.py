"""Starting (or joining) Ray for a run, and where each actor goes.

A local run's Ray binds every port to 127.0.0.1 (raylet, GCS, workers, dashboard, metrics): Ray 2.60
replaces --node-ip-address=127.0.0.1 by the machine's address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
is set for the processes it starts (shared/ENVIRONMENT.md). `--address auto` joins a real cluster
unchanged."""
from __future__ import annotations

import os
from typing import Any

import torch

from runtime import openmp_env


def init_ray(address: str | None, dashboard: bool, dashboard_host: str, overlapping: bool) -> None:
    """Start a loopback-only local Ray (address None) or join `address`. `overlapping`: learner and
    rollouts share the cores at the same time (off-policy), which decides how OpenMP threads wait."""
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": openmp_env(overlapping=overlapping)}
    if address:
        ctx = ray.init(address=address, runtime_env=env)
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ctx = ray.init(include_dashboard=dashboard, dashboard_host=dashboard_host, num_cpus=os.cpu_count(),
                       _node_ip_address="127.0.0.1", runtime_env=env)
    if getattr(ctx, "dashboard_url", None):
        print(f"[ray] dashboard: http://{ctx.dashboard_url}  (actors: learner, rollout-i, reward-j; "
              f"it asks for a token: `ray get-auth-token` prints it)")


def resolve_device(name: str) -> str:
    """auto: cuda when this process sees a GPU, or (a driver on a CPU head node) when the Ray
    cluster it joined has GPUs; else cpu."""
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            import ray

            if not (ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0):
                raise ValueError(f"--device {name}: no CUDA GPU here or in the Ray cluster (use --device cpu)")
        return name
    if torch.cuda.is_available():
        return "cuda"
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
        return "cuda"
    return "cpu"


def placement(device: str, rollout_workers: int, reward_workers: int, reward_on_gpu: bool) -> dict[str, dict]:
    """Resource requests per actor kind. One GPU: the learner (policy + reference + critic, and the
    optimizer state) gets half, rollout workers share 0.4, reward actors share 0.1 (only a reward
    model needs it). CPU: small shares so every actor schedules on a 2-core machine; the actors then
    take turns on the cores (rollout, then learning) in on-policy mode."""
    if device.startswith("cuda"):
        return {"learner": {"num_gpus": 0.5, "num_cpus": 1},
                "rollout": {"num_gpus": 0.4 / rollout_workers, "num_cpus": 1},
                "reward": {"num_gpus": 0.1 / reward_workers if reward_on_gpu else 0, "num_cpus": 0.5}}
    return {"learner": {"num_cpus": 0.5}, "rollout": {"num_cpus": 0.5 / rollout_workers},
            "reward": {"num_cpus": 0.25 / reward_workers}}


def print_placement(named: list[tuple[str, Any]]) -> None:
    """On a multi-node cluster: which node each actor runs on (id prefix, IP, custom resources)."""
    import ray

    nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    if len(nodes) < 2:
        return
    std = ("CPU", "GPU", "memory", "object_store_memory")
    where = lambda a: ray.get(a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))  # noqa: E731
    parts = []
    for name, actor in named:
        nid = where(actor)
        node = nodes.get(nid, {})
        extra = sorted(k for k in node.get("Resources", {}) if k not in std and not k.startswith(("node:", "accelerator")))
        parts.append(f"{name}={nid[:12]}@{node.get('NodeManagerAddress', '?')}({','.join(extra)})")
    print(f"[ray] {len(nodes)} nodes; placement: " + " ".join(parts), flush=True)
