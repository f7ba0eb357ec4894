"""A math RL run's Ray, seen from outside while experiments/grpo_math.py runs:

* its own local Ray listens on 127.0.0.1 only (every listening socket of the run's process tree,
  sampled with psutil while it trains), --prometheus scrapes its ray_minimind_* gauges (Prometheus's
  query API answers with them), and after SIGKILL of the driver no process of the run is left and its
  Ray session files are gone; the same for experiments/serve.py's Ray while it serves; --prometheus on
  a port another server holds stops the run with one line naming the port;
* joined to a Ray (--address), SIGTERM ends it like Ctrl-C (one line, where --resume continues, no
  stack dump), and a killed learner actor is named with the step --resume continues from (with no
  restarts allowed); with two learner ranks, a killed rank restarts the group from the last checkpoint
  and the run finishes with every step counted once.

The runs are long (--driver.steps=100000) and end when the test ends them; the loops poll until the event
they wait for, with a deadline only as a failure bound (a generous one: other jobs may share the cores).
Nothing here looks at the machine as a whole: a run's processes are the driver's process tree or the pids
the run writes (learner_ranks.json), and its Ray temp folder is under a TMPDIR of its own, so the Ray runs
and test sessions of others on the same machine are neither counted nor killed."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch

from learner.learner import find_checkpoint
from minimind.checkpoint import save_model
from minimind.config import preset
from minimind.data import synthetic_math as sm
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import train_tokenizer
from runtime.ports import port_below_ephemeral_range

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
DEADLINE_S = 600
pytestmark = pytest.mark.slow   # every test here starts and kills whole runs


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """A tiny starting policy with its tokenizer (no bootstrap)."""
    d = tmp_path_factory.mktemp("policy")
    tok = train_tokenizer(sm.pretrain_texts(sm.generate_problems(200, seed=0, split="train"), facts=False),
                          vocab_size=320)
    torch.manual_seed(0)
    save_model(MiniMindForCausalLM(preset("tiny", vocab_size=tok.vocab_size)), d)
    tok.save(d)
    return d


def _start(run_dir: Path, policy: Path, *extra: str, tmpdir: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "experiments" / "grpo_math.py"), f"--run-dir={run_dir}", f"--init={policy}",
            "--n-prompts=16", "--eval-size=0", "--no-progress", "--threads=1", "--rollout.sampling.n=2",
            "--rollout.sampling.max-new-tokens=8", "--driver.prompts-per-step=2", "--driver.steps=100000",
            "--driver.checkpoint-every=1", "--plot-every=0", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MINIMIND_DEBUG")}
    env["RAY_metrics_report_interval_ms"] = "1000"   # gauges reach the endpoint in 1 s instead of 10
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)   # where the run's local Ray makes its temp folder
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(args, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _steps_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"reward_mean"' in line)


def _wait_for(proc: subprocess.Popen, ready, what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-4000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no {what} within {deadline_s}s")
        time.sleep(0.2)


def _query(port: int, expr: str) -> list:
    """The query's result from the Prometheus on `port` ([] while nothing listens there yet)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            body = r.read()
    except http.client.HTTPException as e:   # some other server (e.g. a gRPC one) holds the port
        pytest.fail(f"127.0.0.1:{port} answered, but not over HTTP: {e!r}")
    except OSError:
        return []
    try:
        return json.loads(body)["data"]["result"]
    except (ValueError, KeyError, TypeError):
        pytest.fail(f"127.0.0.1:{port} answered, but not as Prometheus: {body[:200]!r}")


@pytest.fixture
def own_tmpdir():
    """A TMPDIR of the run's own (other runs on the machine make Ray temp folders in /tmp too), short:
    Ray's unix socket paths under it must stay within 107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="mm", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class ProcessTree:
    """Every process below a driver, kept after it exits, and the TCP sockets they listen on."""

    def __init__(self, pid: int):
        self.driver = psutil.Process(pid)
        self.seen: dict[int, psutil.Process] = {}
        self.names: dict[int, str] = {}
        self.listening: set[tuple[str, int, str]] = set()

    def sample(self) -> None:
        try:
            tree = [self.driver, *self.driver.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in tree:
            try:
                self.names[p.pid] = p.name()   # again each time: a Ray worker renames itself ray::<Actor>
                self.seen.setdefault(p.pid, p)
            except psutil.NoSuchProcess:
                continue
        current = {p.pid for p in tree}   # not every pid seen: one that ended may be another process's by now
        for c in psutil.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and c.pid in current:
                self.listening.add((c.laddr.ip, c.laddr.port, self.names[c.pid]))

    def assert_ray_on_loopback_only(self) -> None:
        names = {name for _, _, name in self.listening}
        assert {"raylet", "gcs_server"} <= names and any(n.startswith("ray::") for n in names), self.listening
        assert {ip for ip, _, _ in self.listening} <= LOOPBACK, sorted(self.listening)

    def assert_all_gone_after_sigkill(self, proc: subprocess.Popen, session: list[Path]) -> None:
        """SIGKILL the driver (no handler, no finally): no process of the tree and no session folder is left."""
        proc.kill()
        proc.communicate()
        end = time.monotonic() + DEADLINE_S
        alive = [p for p in self.seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        while (alive or any(Path(d).exists() for d in session)) and time.monotonic() < end:
            time.sleep(0.2)
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [(p.pid, self.names[p.pid]) for p in alive]
        assert not any(Path(d).exists() for d in session), session


def test_local_run_listens_on_loopback_only_feeds_prometheus_and_dies_with_its_driver(policy, tmp_path, own_tmpdir):
    have_prometheus = shutil.which("prometheus") is not None
    if not have_prometheus:
        print("\n*** SKIPPING the --prometheus part: no `prometheus` binary (apt-get install prometheus) ***\n",
              file=sys.stderr)
    port = port_below_ephemeral_range()
    run = tmp_path / "run"
    proc = _start(run, policy, "--no-dashboard", *(["--prometheus", f"--prometheus-port={port}"]
                                                   if have_prometheus else []), tmpdir=own_tmpdir)
    tree = ProcessTree(proc.pid)
    gauge: list = []

    def sample() -> bool:
        tree.sample()
        if have_prometheus and not gauge:
            gauge.extend(_query(port, 'ray_minimind_reward_mean{run="run"}'))
        return _steps_done(run) >= 2 and (gauge or not have_prometheus)

    _wait_for(proc, sample, "two steps" + (" and a ray_minimind_* gauge in Prometheus" if have_prometheus else ""))
    tree.assert_ray_on_loopback_only()
    if have_prometheus:
        assert float(gauge[0]["value"][1]) >= 0.0
    session = list(own_tmpdir.glob("minimind-ray-*"))
    assert session, "the run's Ray did not use a temp folder of its own"
    tree.assert_all_gone_after_sigkill(proc, session)


def test_prometheus_port_in_use_stops_the_run_with_one_line(policy, tmp_path, own_tmpdir):
    """--prometheus on a port another server holds: exit status 2 and one line naming the port and the flag,
    not a run whose Prometheus URL is someone else's."""
    if shutil.which("prometheus") is None:
        pytest.skip("no `prometheus` binary (apt-get install prometheus)")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _start(tmp_path / "run", policy, "--no-dashboard", "--prometheus", f"--prometheus-port={port}",
                      tmpdir=own_tmpdir)
        try:
            _, err = proc.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"the run did not stop within {DEADLINE_S}s although port {port} is taken")
    assert proc.returncode == 2, err[-4000:]
    line = _one_error_line(err)
    assert f"--prometheus-port {port}: 127.0.0.1:{port} is in use" in line and "pick a free port" in line, line


def test_serve_py_listens_on_loopback_only_and_dies_with_its_process(policy, tmp_path, own_tmpdir):
    """experiments/serve.py without --ray-address: its Ray (GCS, raylet, Serve controller, proxy, replica)
    listens on 127.0.0.1 only, the HTTP port included, and goes away with the process."""
    port = port_below_ephemeral_range()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TMPDIR"] = str(own_tmpdir)
    proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "serve.py"), f"--model={policy}",
                             f"--port={port}", "--name=tiny"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree = ProcessTree(proc.pid)

    def answers() -> bool:
        tree.sample()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                return json.loads(r.read())["data"][0]["id"] == "tiny"
        except OSError:
            return False

    try:
        _wait_for(proc, answers, "an answer on /v1/models")
        tree.sample()
        print("serve.py listening sockets:", *sorted(tree.listening), sep="\n  ")
        tree.assert_ray_on_loopback_only()
        assert ("127.0.0.1", port) in {(ip, p) for ip, p, _ in tree.listening}
        assert any(name.startswith("ray::ServeReplica") for _, _, name in tree.listening), tree.listening
        assert list(own_tmpdir.glob("minimind-ray-*")), "serve.py's Ray did not use a temp folder of its own"
    finally:
        tree.assert_all_gone_after_sigkill(proc, list(own_tmpdir.glob("minimind-ray-*")))


def _checkpoint_step(run: Path) -> int:
    """The step of the checkpoint --resume takes (a save cut short by a kill may leave it beside the folder)."""
    return json.loads((find_checkpoint(run / "checkpoint") / "extra.json").read_text())["step"]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err and "*** SIG" not in err and "Stack trace" not in err, err[-4000:]
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, err[-4000:]
    return lines[0]


def test_sigterm_ends_a_run_like_ctrl_c(ray_local, policy, tmp_path):
    run = tmp_path / "run"
    proc = _start(run, policy, f"--address={ray_local.get_runtime_context().gcs_address}", "--no-dashboard")
    _wait_for(proc, lambda: _steps_done(run) >= 1 and (run / "checkpoint" / "extra.json").is_file(), "a checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-4000:]
    line = _one_error_line(err)
    step = _checkpoint_step(run)
    assert "interrupted" in line and f"--resume continues from the checkpoint at step {step}" in line, line


def test_a_killed_learner_is_named_with_the_step_resume_continues_from(ray_local, policy, tmp_path):
    run = tmp_path / "run"
    proc = _start(run, policy, f"--address={ray_local.get_runtime_context().gcs_address}", "--no-dashboard",
                  "--learner.restarts=0")
    ranks = run / "learner_ranks.json"   # this run's learner (a process name would match other runs' too)
    _wait_for(proc, lambda: _steps_done(run) >= 1 and ranks.is_file(), "a step")
    (learner,) = [r["pid"] for r in json.loads(ranks.read_text())]
    os.kill(learner, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-4000:]
    line = _one_error_line(err)
    step = _checkpoint_step(run)
    assert f"the learner actor (pid {learner}) died" in line, line
    assert f"--resume continues from the checkpoint at step {step}" in line, line


def test_a_killed_learner_rank_restarts_the_group_and_the_run_finishes(ray_local, policy, tmp_path):
    """Two learner ranks, a checkpoint every step. The driver is frozen (SIGSTOP) so the kill lands
    mid-run, rank 1 is SIGKILLed, the driver goes on: it notices the dead rank, starts a new group from
    the last checkpoint and finishes; metrics.jsonl has every step once."""
    run, steps = tmp_path / "run", 30
    proc = _start(run, policy, f"--address={ray_local.get_runtime_context().gcs_address}", "--no-dashboard",
                  "--learner.world-size=2", f"--driver.steps={steps}")
    ranks = run / "learner_ranks.json"
    _wait_for(proc, lambda: _steps_done(run) >= 2 and ranks.is_file(), "two steps")
    proc.send_signal(signal.SIGSTOP)
    try:
        assert _steps_done(run) < steps
        before = json.loads(ranks.read_text())
        os.kill(before[1]["pid"], signal.SIGKILL)
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    assert "restarting the learner group" in out and "continuing after step" in out, out[-3000:]
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"reward_mean"' in x]
    assert logged == list(range(1, steps + 1))
    after = json.loads(ranks.read_text())
    assert [r["rank"] for r in after] == [0, 1] and not {r["pid"] for r in after} & {r["pid"] for r in before}
    assert json.loads((run / "summary.json").read_text())["steps"] == steps
