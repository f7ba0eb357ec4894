"""Actor groups: the learner, the rollout workers and the reward actors behind explicit methods that
return object refs. The driver wires refs from one group to the next and never holds a batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from rl.seeds import derive_seed


@dataclass
class LearnerGroup:
    actor: Any   # learner.actor.LearnerActor handle

    def train_step(self, scored: list[ray.ObjectRef]) -> ray.ObjectRef:
        """All updates of one RL step from the scored batches -> ref of its stats."""
        return self.actor.train_step.remote(*scored)

    def weights(self, version: int) -> ray.ObjectRef:
        """The current policy state dict, published as `version`: ONE object-store ref per version."""
        return self.actor.weights.remote(version)

    def save_checkpoint(self, path: str, extra: dict) -> ray.ObjectRef:
        return self.actor.save_checkpoint.remote(path, extra)

    def load_checkpoint(self, path: str) -> dict:
        return ray.get(self.actor.load_checkpoint.remote(path))

    def sampling_weights(self, keys: list[str]) -> list[float]:
        return ray.get(self.actor.sampling_weights.remote(keys))

    def init_tracker(self, rewards_by_key: dict[str, list[float]]) -> int:
        return ray.get(self.actor.init_tracker.remote(rewards_by_key))


@dataclass
class RolloutGroup:
    actors: list   # rollout.worker.RolloutActor handles

    def generate(self, prompts: list[dict], weights: ray.ObjectRef, version: int, seed_parts: tuple,
                 sampling: dict | None = None) -> list[ray.ObjectRef]:
        """Prompts split over the workers; each worker's call gets its own seed, derived from
        `seed_parts` (the run seed, the stream, the driver's call counter) and the worker index
        -> refs of RolloutBatches."""
        k = len(self.actors)
        refs = []
        for i in range(k):
            shard = prompts[i::k]
            if shard:
                refs.append(self.actors[i].generate.remote(shard, [weights], version,
                                                           derive_seed(*seed_parts, i), sampling))
        return refs


@dataclass
class RewardGroup:
    actors: list   # reward.actor.RewardActor handles

    def score(self, generated: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        """Each generated batch scored where the reward actors are (refs in, refs out)."""
        return [self.actors[i % len(self.actors)].score.remote(g) for i, g in enumerate(generated)]


@dataclass
class ActorGroups:
    learner: LearnerGroup
    rollouts: RolloutGroup
    rewards: RewardGroup

    def named(self) -> list[tuple[str, Any]]:
        return ([("learner", self.learner.actor)] + [(f"rollout-{i}", a) for i, a in enumerate(self.rollouts.actors)]
                + [(f"reward-{j}", a) for j, a in enumerate(self.rewards.actors)])
