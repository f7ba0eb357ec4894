"""Held-out accuracy from per-row outcomes: overall and per slice (e.g. difficulty), and pass@k.

pass@k is the unbiased estimator of Chen et al. (2021): with n samples of which c are right,
1 - C(n - c, k) / C(n, k), the chance that k of the n samples drawn without replacement hold a
right one, averaged over prompts (k <= n; pass@1 is the mean accuracy of the samples).
"""
from __future__ import annotations

from math import comb
from typing import Mapping, Sequence

PASS_AT = (4, 8)
"""The k of the pass@k reported beside the sampled accuracy (pass@1), when that many samples exist."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one right among k of n samples, c of them right), drawn without replacement."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def outcome_stats(name: str, correct: Mapping[int, Sequence[float]], slices: Mapping[int, str],
                  ks: Sequence[int] = ()) -> dict[str, float]:
    """`correct`: {prompt uid: the 1/0 of each of its samples}; `slices`: {uid: slice label}.
    -> {name}_accuracy (mean over prompts of their samples' mean) and {name}_pass_at_{k} for each k
    that every prompt has samples for; the same with a _<slice> suffix per slice, when the prompts
    fall in more than one slice."""
    groups = {"": list(correct)}
    labels = {slices.get(u, "") for u in correct}
    if len(labels) > 1:
        for u in correct:
            groups.setdefault(f"_{slices.get(u, '') or 'none'}", []).append(u)
    out: dict[str, float] = {}
    for suffix, uids in groups.items():
        if not uids:
            continue
        out[f"{name}_accuracy{suffix}"] = sum(sum(correct[u]) / len(correct[u]) for u in uids) / len(uids)
        n = min(len(correct[u]) for u in uids)
        for k in ks:
            if k <= n:
                out[f"{name}_pass_at_{k}{suffix}"] = sum(
                    pass_at_k(len(correct[u]), int(sum(correct[u])), k) for u in uids) / len(uids)
    return out
