"""How long idle OpenMP threads spin before they sleep, for our CPU processes (no torch import here:
libgomp reads these variables once, when torch loads it, so they must be set before that).

torch's CPU ops hand each op to an OpenMP team and the helper threads wait at a barrier between ops.
A decode step is hundreds of short ops, so how the helpers wait decides its speed:
- sleeping at once (OMP_WAIT_POLICY=PASSIVE) makes every op pay a futex wake-up;
- spinning a bounded while, then sleeping (GOMP_SPINCOUNT), keeps the team hot between back-to-back
  ops and still gives the core away when the process idles (e.g. a learner waiting for rollouts);
- spinning costs a lot when another busy process wants the same cores, because the spinning helper
  holds a core the other process's threads need.

Measured on the 2-core machines (decode, 64 rows): minimind2-small 39.2 ms/step passive vs 29.9
bounded spin, tiny 5.3 vs 2.5; with one busy process on the cores, passive 91.7 / 3.7 vs spin
102.5 / 13.3. `grpo_math.py`, 8 steps: on-policy (learner and rollouts take turns) RL wall 35.8 s
passive vs 27.0 s spin (generate 1.06 -> 0.61 s/step, learn 3.34 -> 2.70 s/step); off-policy
(generation overlaps learning) 29.1 s passive vs 46.2 s spin. Hence: spin unless processes overlap.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

SPIN_COUNT = 100_000
"""GOMP_SPINCOUNT when processes take turns: long enough to bridge the gap between two ops."""
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


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
