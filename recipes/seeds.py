"""One run seed fans out to every component: each gets its own stream, derived from the run seed and
the component's name (and worker / call index), stable across processes and Python versions."""
from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed (fits every RNG's seed type) for the component named by `parts`, e.g.
    ("rollout", call, worker)."""
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little") >> 1
