"""Starting (or joining) Ray for a run, and where each actor goes.

A local run's Ray binds every port to 127.0.0.1 (raylet, GCS, workers, dashboard, metrics): Ray 2.60
replaces --node-ip-address=127.0.0.1 by the machine's address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
is set (shared/ENVIRONMENT.md), and Ray reads that variable once, when it is imported: the processes
it starts get it from the environment, this process needs its constant set (tests/test_ray_lifetime.py
lists the run's listening sockets). Its processes end with the driver, however the driver ends
(runtime.reaper), and its session files (under a temp folder of its own) go with them.
`--address auto` joins a real cluster unchanged."""
from __future__ import annotations

import os
import signal
import tempfile
from typing import Any

import torch

from runtime import openmp_env
from runtime.reaper import Reaper, descendants

TOKEN_HINT = "the page asks for a token: run `ray get-auth-token` (it prints the one in ~/.ray/auth_token)"


LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only() -> None:
    """This process's Ray on 127.0.0.1 only (the processes it starts get LOOPBACK_VAR from ray.init)."""
    try:
        from ray._private import ray_constants
    except ImportError:
        return
    ray_constants.ENABLE_RAY_CLUSTER = False   # read at import; Ray was imported before the flags were parsed


def _terminate_like_ctrl_c(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def init_ray(address: str | None, dashboard: bool, dashboard_host: str, overlapping: bool) -> Reaper | None:
    """Start a loopback-only local Ray (address None) or join `address`. `overlapping`: learner and
    rollouts share the cores at the same time (off-policy), which decides how OpenMP threads wait.
    Returns the local Ray's reaper (more processes to end with the driver go to its `watch`)."""
    import ray

    if ray.is_initialized():
        return None
    reaper = None
    env = {"env_vars": openmp_env(overlapping=overlapping)}
    if address:
        ctx = ray.init(address=address, runtime_env=env)
    else:
        _loopback_only()
        temp_dir = tempfile.mkdtemp(prefix="minimind-ray-")
        reaper = Reaper.start(temp_dir)
        before = os.environ.get(LOOPBACK_VAR)
        os.environ[LOOPBACK_VAR] = "0"     # inherited by GCS, raylet, agents and (through raylet) workers
        try:
            ctx = ray.init(include_dashboard=dashboard, dashboard_host=dashboard_host, num_cpus=os.cpu_count(),
                           _node_ip_address="127.0.0.1", _temp_dir=temp_dir, runtime_env=env)
        finally:   # anything else this process starts later keeps the user's environment
            if before is None:
                os.environ.pop(LOOPBACK_VAR, None)
            else:
                os.environ[LOOPBACK_VAR] = before
        reaper.watch(descendants())
    # after ray.init: Ray's core worker installs a SIGTERM handler that dumps a C++ stack; a SIGTERM'd
    # run ends like Ctrl-C instead (KeyboardInterrupt: `finally` blocks shut Ray down)
    signal.signal(signal.SIGTERM, _terminate_like_ctrl_c)
    if getattr(ctx, "dashboard_url", None):
        print(f"[ray] dashboard: http://{ctx.dashboard_url}  (actors: learner, rollout-i, reward-j; {TOKEN_HINT})",
              flush=True)
    return reaper


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


def placement(device: str, rollout_workers: int, reward_workers: int, reward_on_gpu: bool,
              learner_ranks: int = 1, gpus: float | None = None) -> dict[str, dict]:
    """Resource requests per actor kind (the learner's: per rank). One GPU: the learner (policy +
    reference + critic, and the optimizer state) gets half, rollout workers share 0.4, reward actors
    share 0.1 (only a reward model needs it). Several learner ranks on a node with more GPUs than
    ranks: one GPU per rank, the rollouts share what is left; with no GPU to spare the ranks take 0.5
    each (beside the rollouts). CPU: small shares so every actor schedules on a 2-core machine; the
    actors then take turns on the cores (rollout, then learning) in on-policy mode."""
    if device.startswith("cuda"):
        reward = {"num_gpus": 0.1 / reward_workers if reward_on_gpu else 0, "num_cpus": 0.5}
        if learner_ranks > 1:
            if gpus is None:
                import ray

                gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
            spare = gpus - learner_ranks
            if spare >= 0.5:
                return {"learner": {"num_gpus": 1, "num_cpus": 1},
                        "rollout": {"num_gpus": min(1.0, (spare - (0.1 if reward_on_gpu else 0)) / rollout_workers),
                                    "num_cpus": 1}, "reward": reward}
        return {"learner": {"num_gpus": 0.5, "num_cpus": 1},
                "rollout": {"num_gpus": 0.4 / rollout_workers, "num_cpus": 1}, "reward": reward}
    return {"learner": {"num_cpus": 0.5 / learner_ranks}, "rollout": {"num_cpus": 0.5 / rollout_workers},
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
