"""--prometheus: a local Prometheus that scrapes this run's Ray metrics, so the ray_minimind_* gauges
can be queried and graphed while the run trains (the Ray dashboard draws charts only with Prometheus).

It is Debian's `prometheus` binary (apt-get install prometheus), never downloaded at run time. It
listens on 127.0.0.1 only and reads the service-discovery file Ray writes for its session (the file
Ray's own prometheus.yml points at), with a short scrape interval so a short run is visible. Its data
stays in <run_dir>/prometheus; it ends with the run (and with the driver, however it ends)."""
from __future__ import annotations

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
DISCOVERY_FILE = "prom_metrics_service_discovery.json"   # what Ray writes into its session folder


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


def start_prometheus(session_dir: str, run_dir: Path, port: int, interval_s: int = 2) -> LocalPrometheus:
    """Prometheus on 127.0.0.1:`port` scraping the Ray session in `session_dir`."""
    binary = prometheus_binary()
    conf_dir = Path(session_dir) / "metrics" / "prometheus"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "minimind_prometheus.yml"
    conf.write_text(SCRAPE_CONFIG.format(interval=interval_s, discovery=Path(session_dir) / DISCOVERY_FILE))
    data = run_dir / "prometheus"
    data.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "prometheus.log", "ab")
    proc = subprocess.Popen([binary, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{port}",
                             f"--storage.tsdb.path={data}", "--log.level=warn"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    url = f"http://127.0.0.1:{port}"
    print(f"[prometheus] {url}  (graph or query the run's gauges, e.g. {url}/graph?g0.expr=ray_minimind_reward_mean; "
          f"log in {run_dir / 'prometheus.log'})", flush=True)
    return LocalPrometheus(proc, url)
