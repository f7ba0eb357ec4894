"""Step stats that say how they reduce, where they are made.

A loss or stage reports plain floats for means and marks the others:

    stats = {"pg_loss": loss, "ratio_max": maximum(r.max()), "rows": total(len(batch))}

The learner reduces a step's stats once, over its micro-batches and learner ranks, by each value's
own `Reduce`: a plain float is a mean (weighted by tokens for a micro-batch's loss stats, by rows for
a batch's stats), `maximum(...)` is the largest value seen, `total(...)` the sum. No list of names
anywhere says which stat is which.
"""
from __future__ import annotations

from enum import Enum
from typing import Any


class Reduce(str, Enum):
    MEAN = "mean"   # weighted mean: by loss-carrying tokens (micro-batch stats), by rows (batch stats)
    MAX = "max"     # a bound over the step: the largest value of any micro-batch or rank
    SUM = "sum"     # a count that adds up over learner ranks


class Stat(float):
    """A float carrying its reduction (pickles, compares and formats as the float it is)."""

    reduce: Reduce

    def __new__(cls, value: Any, reduce: Reduce = Reduce.MEAN) -> "Stat":
        self = super().__new__(cls, float(value))
        self.reduce = Reduce(reduce)
        return self

    def __reduce__(self) -> tuple:
        return Stat, (float(self), self.reduce)

    def __repr__(self) -> str:
        return f"{self.reduce.value}({float(self)!r})"


def maximum(value: Any) -> Stat:
    """A stat reduced by max over micro-batches and ranks (e.g. a bound, the slowest rank's time)."""
    return Stat(value, Reduce.MAX)


def total(value: Any) -> Stat:
    """A stat summed over learner ranks (a count of rows, groups, ...)."""
    return Stat(value, Reduce.SUM)


def reduction(value: Any) -> Reduce:
    """How `value` reduces: its own mark, a mean for a plain float."""
    return getattr(value, "reduce", Reduce.MEAN)
