"""Training metrics: metrics.jsonl + a tqdm bar + optional Ray gauges (curves.png: learner/curves.py).

    with MetricsLogger(run_dir, total_steps=200, desc="grpo", ray_metrics=True) as log:
        for step in range(1, 201):
            log.log(step, reward=r, kl=kl, loss=loss)

Each ``log`` call appends one JSON line ``{"step": s, "time": t, **metrics}`` where
``time`` is seconds since the logger was created. Tensors / numpy scalars become floats
(non-scalar ones become lists), NaN and ±inf become ``null``.
"""
from __future__ import annotations

import json
import math
import numbers
import re
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "RayMetrics", "read_metrics"]

# metrics shown in the progress-bar postfix, in this order, when present
_POSTFIX_KEYS = ("loss", "reward", "accuracy", "acc", "kl", "entropy", "lr")
_POSTFIX_MAX = 4


def _to_json_value(value: Any) -> Any:
    """Tensor/numpy/python value -> JSON-safe python value (NaN/inf -> None)."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar / 0-d
        value = value.item()
    elif hasattr(value, "tolist"):  # numpy array
        value = value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v) for v in value]
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class RayMetrics:
    """Forward scalar metrics to Ray's metrics system (Prometheus / the Ray dashboard).

    One ``ray.util.metrics.Gauge`` per metric, named ``<prefix>_<name>`` with anything
    outside [a-zA-Z0-9_] replaced by ``_``, tagged ``run=<run>``. A no-op unless
    ``ray.is_initialized()`` (or when Ray is not installed); gauges are created lazily.
    """

    def __init__(self, prefix: str = "minimind", run: str = "default"):
        self.prefix = prefix
        self.run = run
        self._gauges: dict[str, Any] = {}

    def metric_name(self, name: str) -> str:
        full = re.sub(r"[^a-zA-Z0-9_]", "_", f"{self.prefix}_{name}" if self.prefix else name)
        return full if not full[:1].isdigit() else "m_" + full

    @staticmethod
    def active() -> bool:
        try:
            import ray
        except ImportError:
            return False
        return ray.is_initialized()

    def log(self, step: int | None = None, **metrics: Any) -> None:
        if not self.active():
            return
        from ray.util.metrics import Gauge

        if step is not None:
            metrics = {"step": step, **metrics}
        for key, value in metrics.items():
            value = _to_json_value(value)
            if not _is_number(value):
                continue  # None (NaN), strings, lists: not a gauge value
            name = self.metric_name(key)
            gauge = self._gauges.get(name)
            if gauge is None:
                gauge = self._gauges[name] = Gauge(
                    name, description=f"MiniMind-RL metric {key}", tag_keys=("run",))
            gauge.set(float(value), tags={"run": self.run})


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, allow_nan=False) + "\n"


class MetricsLogger:
    """Appends metrics to ``run_dir/metrics.jsonl`` and shows a tqdm progress bar.

    ``log(step, **metrics)`` writes and flushes one line; the bar moves to ``step`` and
    shows a few key metrics. ``ray_metrics=True`` also sets Ray gauges (see RayMetrics;
    run tag = the run directory's name). Use as a context manager or call ``close()``.
    """

    def __init__(self, run_dir: str | Path, total_steps: int | None = None, desc: str = "",
                 enable_progress: bool = True, ray_metrics: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
        self._start = time.time()
        self._bar = None
        if enable_progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, desc=desc or None, dynamic_ncols=True)
        self.ray = RayMetrics(run=self.run_dir.name) if ray_metrics else None

    def warn(self, message: str) -> None:
        """`warning: <message>` on stderr, above the progress bar (not through it)."""
        import sys

        if self._bar is not None:
            self._bar.write(f"warning: {message}", file=sys.stderr)
        else:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def log(self, step: int, **metrics: Any) -> dict[str, Any]:
        """Record metrics for ``step``; returns the record as written."""
        if self._file.closed:
            raise RuntimeError("MetricsLogger.log after close()")
        clash = {"step", "time"} & set(metrics)
        if clash:
            raise ValueError(f"metric names {sorted(clash)} are reserved")
        record = {"step": int(step), "time": round(time.time() - self._start, 3)}
        record.update({k: _to_json_value(v) for k, v in metrics.items()})
        self._file.write(_line(record))
        self._file.flush()
        if self._bar is not None:
            self._update_bar(record)
        if self.ray is not None:
            self.ray.log(record["step"], **{k: record[k] for k in metrics})
        return record

    def drop_after(self, step: int) -> int:
        """Resuming from a checkpoint taken at `step`: remove the records of later steps (a run that
        crashed between checkpoints logged steps it will now run again) and a half-written last line.
        Returns how many records were dropped."""
        self._file.close()
        records = read_metrics(self.path)
        kept = [r for r in records if r["step"] <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(_line(r) for r in kept), encoding="utf-8")
        tmp.replace(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()
        return len(records) - len(kept)

    def _update_bar(self, record: dict[str, Any]) -> None:
        shown = [k for k in _POSTFIX_KEYS if _is_number(record.get(k))]
        if not shown:
            shown = [k for k, v in record.items() if k not in ("step", "time") and _is_number(v)]
        postfix = {k: f"{record[k]:.4g}" for k in shown[:_POSTFIX_MAX]}
        self._bar.set_postfix(postfix, refresh=False)
        advance = record["step"] - self._bar.n
        if advance > 0:
            self._bar.update(advance)
        else:
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file, in order (``null`` comes back as None).

    A malformed line raises ValueError naming the file and line, except a truncated
    *last* line (a run killed mid-write), which is skipped with a warning.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == len(lines):
                warnings.warn(f"{path}:{i}: skipping truncated last line ({e})")
                break
            raise ValueError(f"{path}:{i}: bad metrics line: {e}") from None
        records.append(rec)
    return records
