"""Shared helpers for the benchmark scripts (bench/generate.py, bench/train.py).

Every script prints ONE JSON object on stdout. `--append` also appends it as one line to
bench/results.jsonl. Timings on the shared CPU machines are noisy (another process may be using
the cores), so comparisons are made *inside one run*: ours and theirs are interleaved repeat by
repeat (alternating which goes first) and the reported ratio is the median of the per-repeat
ratios, not a ratio of numbers taken at different times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


# --------------------------------------------------------------------------- CLI / output
def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="short run (smaller configs, fewer repeats)")
    p.add_argument("--append", action="store_true", help=f"also append the JSON line to {RESULTS}")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default: 3, quick: 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per side")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    return p


def setup(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    torch.manual_seed(args.seed)


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    def ver(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": ver("transformers"),
        "cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_at_start": [round(x, 2) for x in load] if load else None,
        "git": _git_rev(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_rev() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except Exception:
        return None


def emit(result: dict[str, Any], append: bool) -> None:
    """Print the one JSON object; with `append`, also add it as a line to bench/results.jsonl."""
    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}
    line = json.dumps(result, sort_keys=False)
    print(line, flush=True)
    if append:
        with RESULTS.open("a") as f:
            f.write(line + "\n")


def log(*a: Any) -> None:
    """Progress goes to stderr so stdout stays one JSON object."""
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- timing
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                work: dict[str, float] | None = None) -> dict[str, Any]:
    """Time every side `repeats` times, interleaved (A B, B A, A B, ...), after `warmup` untimed calls
    each. Returns per side: seconds (list), median_s, peak_rss_mb (sampled during that side's calls)
    and, if `work[side]` (e.g. tokens per call) is given, rate (work / median_s) and rates (list).
    With exactly two sides, also `ratio` = median of per-repeat (rate_0 / rate_1), i.e. side 0 / side 1
    speed measured back to back."""
    names = list(sides)
    for name in names:
        for _ in range(warmup):
            sides[name]()
    secs: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = {n: 0.0 for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            with PeakRSS() as pk:
                dt, _ = time_call(sides[name])
            secs[name].append(dt)
            peaks[name] = max(peaks[name], pk.peak_mb)
    out: dict[str, Any] = {}
    for n in names:
        d: dict[str, Any] = {"seconds": [round(s, 4) for s in secs[n]], "median_s": round(median(secs[n]), 4),
                             "peak_rss_mb": round(peaks[n], 1)}
        if work and n in work:
            d["rate"] = round(work[n] / median(secs[n]), 2)
            d["rates"] = [round(work[n] / s, 2) for s in secs[n]]
        out[n] = d
    if len(names) == 2:
        a, b = names
        wa, wb = (work or {}).get(a, 1.0), (work or {}).get(b, 1.0)
        per = [(wa / sa) / (wb / sb) for sa, sb in zip(secs[a], secs[b])]
        out["ratio"] = round(median(per), 3)
        out["ratios"] = [round(x, 3) for x in per]
    return out


# --------------------------------------------------------------------------- memory
def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return max_rss_mb()


def max_rss_mb() -> float:
    """Process-lifetime peak RSS (ru_maxrss) in MiB: monotonic, so not per-phase."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


class PeakRSS:
    """Peak RSS while the block runs, sampled by a background thread every `interval` seconds
    (ru_maxrss only ever grows, so it cannot attribute a peak to one phase). On CUDA also records
    torch.cuda.max_memory_allocated for the block."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_mb = 0.0
        self.cuda_peak_mb: float | None = None
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak_mb = rss_mb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
        if torch.cuda.is_available():
            self.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20


# --------------------------------------------------------------------------- compute peak
def matmul_peak_flops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32,
                      device: str = "cpu") -> float:
    """Measured matmul peak in FLOP/s: best of `repeats` n×n×n torch.mm (2n³ FLOPs each).
    Best-of (not median) because the peak is what the hardware can do when undisturbed."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)  # warm-up (thread pool, caches)
    best = float("inf")
    for _ in range(repeats):
        dt, _ = time_call(lambda: torch.mm(a, b))
        best = min(best, dt)
    return 2 * n ** 3 / best
