"""Process tuning for our CPU processes (driver, learner, rollout workers): how idle OpenMP threads
wait, and where glibc malloc gets large buffers. Neither changes a result, only its speed; the
measurements behind both choices are in docs/performance_notes.md.

OpenMP: libgomp reads its variables once, when torch loads it, so they are set before that (this
module does not import torch). Bounded spinning (GOMP_SPINCOUNT) keeps a team hot between the
hundreds of short ops of a decode step; sleeping at once (OMP_WAIT_POLICY=PASSIVE) is better only
when other busy processes share the cores at the same time (off-policy RL), because a spinning
helper then holds a core the other process needs.

malloc: RL steps allocate and free the same large [B, R, V] buffers every step; above glibc's mmap
threshold each one is a fresh zero-filled mmap. Raising the mmap/trim thresholds keeps freed memory
in the heap for reuse (no-op outside glibc, or with MINIMIND_MALLOC_TUNE=0).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Mapping

SPIN_COUNT = 100_000
"""GOMP_SPINCOUNT when processes take turns: long enough to bridge the gap between two ops."""
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MALLOC_THRESHOLD_BYTES = 1 << 30
"""1 GiB: larger than any per-step tensor of the CPU presets."""


def openmp_env(overlapping: bool, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a CPU process (or a Ray job's workers). `overlapping`: other busy processes
    share its cores at the same time. A user's own OMP_WAIT_POLICY / GOMP_SPINCOUNT always win."""
    environ = os.environ if environ is None else environ
    user = {k: environ[k] for k in USER_KEYS if k in environ}
    if user:
        return user
    if overlapping:
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    return {"GOMP_SPINCOUNT": str(SPIN_COUNT)}


def set_openmp_env(overlapping: bool) -> dict[str, str]:
    """Put `openmp_env` into this process's environment; call before the first `import torch`."""
    if "torch" in sys.modules:
        raise RuntimeError("set_openmp_env: torch is already imported, its OpenMP runtime has read the "
                           "environment; call this first")
    env = openmp_env(overlapping)
    os.environ.update(env)
    return env


@functools.cache
def tune_malloc(threshold_bytes: int = MALLOC_THRESHOLD_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once: mallopt is process-wide);
    returns whether the tuning is in effect."""
    if os.environ.get("MINIMIND_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    value = min(int(threshold_bytes), 2**31 - 1)
    return bool(mallopt(M_MMAP_THRESHOLD, value)) and bool(mallopt(M_TRIM_THRESHOLD, value))

