"""Which training prompts each RL step sees. Both samplers are seeded from the run seed and
checkpointed, so a resumed run draws the prompts the uninterrupted one would have."""
from __future__ import annotations

import random
from typing import Callable, Sequence


class ShuffleSampler:
    """Epochs over seeded permutations of the prompt pool."""

    def __init__(self, n_prompts: int, seed: int):
        self.n, self.rng, self.order = n_prompts, random.Random(seed), []

    def next(self, k: int) -> list[int]:
        picked = []
        while len(picked) < k:
            if not self.order:
                self.order = list(range(self.n))
                self.rng.shuffle(self.order)
            picked.append(self.order.pop())
        return picked

    def state_dict(self) -> dict:
        return {"rng": _rng_to_json(self.rng.getstate()), "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(_rng_from_json(state["rng"]))
        self.order = list(state["order"])


class WeightedSampler:
    """Draws with replacement, weighted by `weights(keys)` (SPO: √(v(1−v)) + floor from the learner's
    tracker, asked once per draw)."""

    def __init__(self, keys: Sequence[str], seed: int, weights: Callable[[list[str]], list[float]]):
        self.keys, self.rng, self.weights = list(keys), random.Random(seed), weights

    def next(self, k: int) -> list[int]:
        return self.rng.choices(range(len(self.keys)), weights=self.weights(self.keys), k=k)

    def state_dict(self) -> dict:
        return {"rng": _rng_to_json(self.rng.getstate())}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(_rng_from_json(state["rng"]))


def _rng_to_json(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _rng_from_json(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])
