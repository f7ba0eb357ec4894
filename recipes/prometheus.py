"""--prometheus: a local Prometheus that scrapes this run's Ray metrics, so the ray_minimind_* gauges
can be queried and graphed while the run trains (the Ray dashboard draws charts only with Prometheus).

It is Debian's `prometheus` binary (apt-get install prometheus), never downloaded at run time. It
listens on 127.0.0.1 only and scrapes what Ray's own session config scrapes (job 'ray': each node's
metrics export port, in the file-discovery format of Ray's prom_metrics_service_discovery.json, which
Ray itself writes only when its dashboard runs), with a short scrape interval so a short run is
visible. Its config and data stay in <run_dir>/prometheus; it ends with the run (and with the driver,
however it ends). The run goes on only once Prometheus itself answers ready on its port: a port taken by
another process (often one of Ray's, which pick free ports at random) stops the run with one line."""
from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SCRAPE_CONFIG = """global:
  scrape_interval: {interval}s
  evaluation_interval: {interval}s
scrape_configs:
- job_name: 'ray'
  file_sd_configs:
  - files:
    - '{discovery}'
"""
READY_DEADLINE_S = 60.0
"""A failure bound only: Prometheus answers ready in well under a second on an idle machine, and it
exits at once when its port is taken."""


class PrometheusError(RuntimeError):
    """Prometheus did not start on its port (taken, or Prometheus exited): the run stops with one line."""


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)
    if found is None:
        raise FileNotFoundError("--prometheus: no `prometheus` binary on PATH (Debian/Ubuntu: apt-get install "
                                "prometheus; it is never downloaded at run time)")
    return found


@dataclass
class LocalPrometheus:
    proc: subprocess.Popen
    url: str

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ray_targets() -> list[str]:
    """host:port of every live Ray node's metrics export endpoint."""
    import ray

    return [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes()
            if n.get("Alive") and n.get("MetricsExportPort")]


def start_prometheus(targets: list[str], run_dir: Path, port: int, interval_s: int = 2) -> LocalPrometheus:
    """Prometheus on 127.0.0.1:`port` scraping `targets` (Ray's metrics endpoints)."""
    binary = prometheus_binary()
    home = run_dir / "prometheus"
    (home / "data").mkdir(parents=True, exist_ok=True)
    discovery = home / "ray_targets.json"
    discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
    conf = home / "prometheus.yml"
    conf.write_text(SCRAPE_CONFIG.format(interval=interval_s, discovery=discovery.resolve()))
    log = open(home / "prometheus.log", "ab")
    log_start = log.tell()   # the log of this start only (an earlier run's lines stay above)
    data_path = str((home / "data").resolve())
    proc = subprocess.Popen([binary, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{port}",
                             f"--storage.tsdb.path={data_path}", "--log.level=warn"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, data_path, home / "prometheus.log", log_start, port)
    print(f"[prometheus] {url}  (graph or query the run's gauges, e.g. {url}/graph?g0.expr=ray_minimind_reward_mean; "
          f"log in {home / 'prometheus.log'})", flush=True)
    return LocalPrometheus(proc, url)


def answers_ready(url: str, data_path: str) -> bool:
    """This run's Prometheus answers ready on `url`: HTTP 200 from /-/ready, and its flags name this run's
    data folder (another Prometheus on the port, e.g. Debian's own service on 9090, is not this one)."""
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
            if r.status != 200:
                return False
        with urllib.request.urlopen(f"{url}/api/v1/status/flags", timeout=2) as r:
            return json.loads(r.read())["data"]["storage.tsdb.path"] == data_path
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
        return False   # refused, 503 while it starts, not HTTP (a gRPC server), not Prometheus's JSON


def wait_ready(proc: subprocess.Popen, url: str, data_path: str, log: Path, log_start: int, port: int) -> None:
    """Until this run's Prometheus answers ready; a PrometheusError naming the port and the flag when it
    exits first (or, alive, never answers)."""
    end = time.monotonic() + READY_DEADLINE_S
    where = f"--prometheus-port {port}: 127.0.0.1:{port}"
    while not answers_ready(url, data_path):
        try:
            proc.wait(timeout=0.1)   # returns at once when Prometheus exits
        except subprocess.TimeoutExpired:
            if time.monotonic() < end:
                continue
            proc.kill()
            proc.wait()
            raise PrometheusError(f"{where}: Prometheus did not answer ready within {READY_DEADLINE_S:.0f}s "
                                  f"(Prometheus log: {log})") from None
        with open(log, "rb") as f:
            f.seek(log_start)
            said = f.read().decode(errors="replace")
        if "address already in use" in said:
            raise PrometheusError(f"{where} is in use (Prometheus log: {log}); pick a free port")
        raise PrometheusError(f"{where}: Prometheus exited with status {proc.returncode} before it answered "
                              f"(Prometheus log: {log})")
