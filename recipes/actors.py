"""Actor groups: the learner, the rollout workers and the reward actors behind explicit methods that
return object refs. The driver wires refs from one group to the next and never holds a batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from learner.group import LearnerGroup
from recipes.seeds import derive_seed


@dataclass
class RolloutGroup:
    actors: list   # rollout.worker.RolloutActor handles

    def generate(self, prompts: list[dict], weights: ray.ObjectRef, version: int, seed_parts: tuple,
                 sampling: dict | None = None, call: int = 0) -> list[ray.ObjectRef]:
        """Prompts split over the workers; each worker's call gets its own seed, derived from
        `seed_parts` (the run seed, the stream, the driver's call counter) and the worker index, and
        its rows the ids (call << 40) + (worker << 24) + row -> refs of RolloutBatches."""
        k = len(self.actors)
        refs = []
        for i in range(k):
            shard = prompts[i::k]
            if shard:
                refs.append(self.actors[i].generate.remote(shard, [weights], version,
                                                           derive_seed(*seed_parts, i), sampling,
                                                           (call << 40) + (i << 24)))
        return refs


@dataclass
class RewardGroup:
    actors: list   # reward.actor.RewardActor handles

    def score(self, generated: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        """Each generated batch scored where the reward actors are (refs in, refs out)."""
        return [self.actors[i % len(self.actors)].score.remote(g) for i, g in enumerate(generated)]

    def score_parts(self, generated: list[ray.ObjectRef], parts: int) -> list[list[ray.ObjectRef]]:
        """Each generated batch scored and cut into `parts` of whole groups, one ref each (one per
        learner rank, so a rank fetches only its rows); batch i deals its first group to rank i % parts,
        which keeps the ranks' shares even when batches hold few groups."""
        if parts == 1:
            return [[ref] for ref in self.score(generated)]
        return [list(self.actors[i % len(self.actors)].score_parts.options(num_returns=parts).remote(g, parts, i))
                for i, g in enumerate(generated)]


@dataclass
class ActorGroups:
    learner: LearnerGroup
    rollouts: RolloutGroup
    rewards: RewardGroup

    def named(self) -> list[tuple[str, Any]]:
        ranks = [("learner" if r == 0 else f"learner-{r}", a) for r, a in enumerate(self.learner.actors)]
        return (ranks + [(f"rollout-{i}", a) for i, a in enumerate(self.rollouts.actors)]
                + [(f"reward-{j}", a) for j, a in enumerate(self.rewards.actors)])
