"""A two-node Ray cluster on this one machine, and GRPO with the learner on one node and the
rollout workers on the other: what `ray up cluster.yaml` gives you, without a cloud.

    python scripts/multinode_demo.py                       # tiny settings, ~1 minute on 2 cores
    python scripts/multinode_demo.py -- --driver.steps=20  # anything after -- goes to grpo_math.py

It runs

    ray start --head --port=0 --num-cpus=1 --resources='{"head_node": 1}'   --temp-dir=<own dir> ...
    ray start --address=<head>      --num-cpus=1 --resources='{"worker_node": 1}' --temp-dir=<own dir> ...
    python experiments/grpo_math.py --address=<head> \\
        --learner-resources='{"head_node": 0.1}' --rollout-resources='{"worker_node": 0.1}' ...

and prints the placement line of the run (`[ray] 2 nodes; placement: learner=<node>... rollout-0=<node>...`).
Then it stops ONLY the processes of this cluster (found by its own temp dir and GCS address, and
their children): `ray stop` would kill every Ray on the machine, including other people's.

Notes (Ray 2.60 on Linux): a worker node cannot join a head started with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (that switch means "single-node, loopback only"), and with the
default the nodes register under the machine's own IP (not 127.0.0.1) even when
--node-ip-address=127.0.0.1 is given; so the two nodes listen on that IP, with Ray's token auth
(RAY_AUTH_MODE=token, token in ~/.ray/auth_token). Dashboard off, own ports (picked as they are bound).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.ports import port_below_ephemeral_range

ROOT = Path(__file__).resolve().parents[1]
PLACEMENT_RE = re.compile(r"\[ray\] (\d+) nodes; placement: (.*)")


def ray_cli() -> str:
    """Ray's command line of THIS Python (a virtualenv used without activation has it next to its
    interpreter, not on PATH)."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.is_file() else (shutil.which("ray") or "ray")


def ray_env() -> dict[str, str]:
    """The environment for `ray start` and drivers of this cluster: no inherited RAY_ADDRESS, and
    multi-node allowed (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 would refuse the second node)."""
    drop = ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The nodes listen on the machine's IP: token auth (the token in ~/.ray/auth_token, created by the
    # head if missing). Set explicitly so head, worker and driver agree.
    env.setdefault("RAY_AUTH_MODE", "token")
    return env


@dataclass
class LocalCluster:
    temp_dir: str
    address: str = ""                      # GCS address "ip:port"
    log: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ processes
    def pids(self) -> set[int]:
        """Processes of this cluster: command line names its temp dir or GCS address, plus children."""
        ppid: dict[int, int] = {}
        mine: set[int] = set()
        keys = [self.temp_dir] + ([self.address] if self.address else [])
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            ppid[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            if pid != os.getpid() and any(k in cmd for k in keys):
                mine.add(pid)
        grew = True
        while grew:                        # add descendants (ray::Worker, agents)
            grew = False
            for pid, parent in ppid.items():
                if parent in mine and pid not in mine:
                    mine.add(pid)
                    grew = True
        return mine

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM this cluster's processes, SIGKILL what is left after `grace_s`; remove the temp dir."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
            time.sleep(0.2)
        for pid in pids | self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    # ------------------------------------------------------------------ start
    def _ray_start(self, args: list[str]) -> str:
        out = subprocess.run([ray_cli(), "start", *args], env=ray_env(), capture_output=True, text=True, timeout=120)
        text = out.stdout + out.stderr
        self.log.append(text)
        if out.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{text[-3000:]}")
        return text

    def start(self, cpus_per_node: int = 1, object_store_mb: int = 150) -> "LocalCluster":
        # port 0: each process binds a port the kernel picks (Ray's defaults are fixed ports, e.g. 52365 for
        # the agent: taken by any other cluster on the machine)
        agents = ["--dashboard-agent-listen-port=0", "--dashboard-agent-grpc-port=0", "--runtime-env-agent-port=0",
                  "--metrics-export-port=0"]
        common = [f"--num-cpus={cpus_per_node}", f"--object-store-memory={object_store_mb * 2**20}",
                  f"--temp-dir={self.temp_dir}", "--disable-usage-stats", *agents]
        # the client server's is the one port `ray start` cannot be told to pick itself (port 0)
        text = self._ray_start(["--head", "--port=0", "--include-dashboard=false", "--resources={\"head_node\": 1}",
                                f"--ray-client-server-port={port_below_ephemeral_range()}", *common])
        m = re.search(r"ray start --address='([^']+)'", text)
        if not m:
            raise RuntimeError(f"could not find the head address in:\n{text[-2000:]}")
        self.address = m.group(1)
        self._ray_start([f"--address={self.address}", "--resources={\"worker_node\": 1}", *common])
        return self


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def grpo_args(address: str, run_dir: Path, learner_ranks: int = 1, init: Path | None = None) -> list[str]:
    """grpo_math.py with rollouts pinned to the worker node and the learner to the head node, or with
    `learner_ranks` > 1 its ranks spread over the nodes (one per node); `init`: a starting policy
    instead of the tiny bootstrap."""
    learner = (['--learner-resources={"head_node": 0.1}'] if learner_ranks == 1 else
               [f"--learner.world-size={learner_ranks}", "--learner.placement=spread"])
    return [sys.executable, str(ROOT / "experiments" / "grpo_math.py"), f"--address={address}",
            f"--run-dir={run_dir}", *learner, *([f"--init={init}"] if init else []),
            '--rollout-resources={"worker_node": 0.1}', "--rollout-workers=1", "--threads=1",
            "--bootstrap.preset=tiny", "--bootstrap.n-train=100", "--bootstrap.pretrain-steps=1",
            "--bootstrap.sft-steps=1", "--n-prompts=16", "--eval-size=4", "--no-progress",
            "--rollout.sampling.n=2", "--rollout.sampling.max-new-tokens=8", "--driver.prompts-per-step=2",
            "--driver.steps=2"]


def parse_placement(stdout: str) -> dict[str, str]:
    """{'learner': node id prefix, 'rollout-0': ..., ...} from the run's placement line."""
    m = PLACEMENT_RE.search(stdout)
    if not m:
        return {}
    return {name: where.split("@", 1)[0] for name, where in (part.split("=", 1) for part in m.group(2).split())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "multinode_demo"))
    ap.add_argument("--keep", action="store_true", help="leave the cluster running (stop it yourself)")
    ap.add_argument("extra", nargs="*", help="after --: more grpo_math.py flags")
    ns = ap.parse_args(argv)
    cluster = LocalCluster(tempfile.mkdtemp(prefix="mmray", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        cluster.start()
        print(f"[demo] 2-node cluster at {cluster.address} ({time.perf_counter() - t0:.1f}s); temp dir {cluster.temp_dir}")
        out = subprocess.run(grpo_args(cluster.address, Path(ns.run_dir)) + ns.extra, env=ray_env(),
                             cwd=ROOT, text=True, capture_output=True)
        print(out.stdout)
        if out.returncode != 0:
            print(out.stderr[-5000:], file=sys.stderr)
            return out.returncode
        where = parse_placement(out.stdout)
        ok = where.get("learner") and all(v != where["learner"] for k, v in where.items() if k.startswith("rollout"))
        print(f"[demo] learner on node {where.get('learner')}, rollouts on "
              f"{sorted({v for k, v in where.items() if k.startswith('rollout')})}: "
              f"{'different nodes' if ok else 'NOT on different nodes'}")
        return 0 if ok else 1
    finally:
        if ns.keep:
            print(f"[demo] cluster left running: {cluster.address}; its processes: {sorted(cluster.pids())}")
        else:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
