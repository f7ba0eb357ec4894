"""The Learner as a Ray actor: same object, remote methods. Batches arrive as object refs
(Ray resolves top-level ref arguments on the actor), and `weights()` returns a state dict that
stays in the object store until a rollout worker asks for it."""
from __future__ import annotations

from typing import Any, Callable

import ray

from rollout.batch import RolloutBatch


class LearnerWorker:
    """Builds its Learner on the actor from a factory (so the model is created where it trains)."""

    def __init__(self, factory: Callable[[], Any]):
        self.learner = factory()

    def train_step(self, *batches: RolloutBatch) -> dict[str, float]:
        batch = batches[0] if len(batches) == 1 else RolloutBatch.concat(list(batches))
        return self.learner.train_step(batch)

    def weights(self) -> dict:
        return self.learner.weights()

    def version(self) -> int:
        return self.learner.version

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Small control-plane calls (checkpoint, tracker weights) without one wrapper each."""
        target = self.learner
        for part in method.split("."):
            target = getattr(target, part)
        return target(*args, **kwargs)


LearnerActor = ray.remote(LearnerWorker)
