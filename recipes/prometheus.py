"""--prometheus: a local Prometheus that scrapes this run's Ray metrics, so the ray_minimind_* gauges
can be queried and graphed while the run trains (the Ray dashboard draws charts only with Prometheus).

It is Debian's `prometheus` binary (apt-get install prometheus), never downloaded at run time. It
listens on 127.0.0.1 only and scrapes what Ray's own session config scrapes (job 'ray': each node's
metrics export port, in the file-discovery format of Ray's prom_metrics_service_discovery.json, which
Ray itself writes only when its dashboard runs), with a short scrape interval so a short run is
visible. Its config and data stay in <run_dir>/prometheus; it ends with the run (and with the driver,
however it ends)."""
from __future__ import annotations

import json
import shutil
import subprocess
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
    proc = subprocess.Popen([binary, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{port}",
                             f"--storage.tsdb.path={home / 'data'}", "--log.level=warn"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    url = f"http://127.0.0.1:{port}"
    print(f"[prometheus] {url}  (graph or query the run's gauges, e.g. {url}/graph?g0.expr=ray_minimind_reward_mean; "
          f"log in {home / 'prometheus.log'})", flush=True)
    return LocalPrometheus(proc, url)
