"""The learner group: one Ray actor per data-parallel learner rank (learner.actor.LearnerWorker),
joined into one torch.distributed group, behind explicit methods. Used by the RL driver (recipes.actors)
and by the supervised recipes when --learner.world-size > 1."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .distributed import LearnerGroupConfig


def actor_death(e: Exception) -> str:
    """Which actor died (its name and pid) and what Ray says of why, in one line."""
    text = str(e)
    name = re.search(r"^\s*name: (\S+)", text, re.M)
    pid = re.search(r"^\s*pid: (\d+)", text, re.M)
    why = re.search(r"Worker exit detail: ([^.]*)", text)
    return ((f"the {name.group(1)} actor" if name else "an actor") + (f" (pid {pid.group(1)})" if pid else "")
            + " died" + (f": {why.group(1)}" if why else ""))


class LearnerFailed(RuntimeError):
    """A learner rank died or did not finish a step in time; the message names it."""


@dataclass
class LearnerGroup:
    """The learner: one actor per data-parallel rank (rank 0 first). Rank r trains on part r of every
    scored batch; rank 0 publishes weights and writes checkpoints. `start` builds a group (and
    `restart` a new one like it, after a rank died)."""
    actors: list                  # learner.actor.LearnerActor handles
    timeout_s: float = 600.0
    ranks: list[dict] = field(default_factory=list)   # where each rank runs: rank, pid, ip, node_id
    spawn: Callable[[int], "LearnerGroup"] | None = field(default=None, repr=False)
    generation: int = 0
    placement_group: Any = field(default=None, repr=False)

    @classmethod
    def start(cls, factory: Callable[[], Any], cfg: LearnerGroupConfig, device: str, resources: dict,
              threads: int, generation: int = 0, options: dict | None = None,
              recorder: Any = None) -> "LearnerGroup":
        """`cfg.world_size` LearnerActors in a placement group (pack or spread), joined into one
        torch.distributed group at the rendezvous store rank 0 serves; each builds its Learner from
        `factory`. `resources`: one rank's Ray request (num_cpus, num_gpus); `options`: more actor options
        (e.g. custom resources); `recorder`: a learner.record.BatchRecorder (one rank only)."""
        from .actor import LearnerActor

        n = cfg.world_size
        suffix = f"@{generation}" if generation else ""
        names = ["learner" + suffix] + [f"learner-{r}{suffix}" for r in range(1, n)]
        opts = dict(options or {})
        pg = None
        if recorder is not None and n > 1:
            raise ValueError(f"recording batches needs one learner rank (each of {n} ranks holds part of a batch)")
        if n == 1:
            actors = [LearnerActor.options(name=names[0], **resources, **opts).remote(factory, threads=threads,
                                                                                      recorder=recorder)]
        else:
            pg = placement_group([bundle(resources, opts.get("resources"))] * n, strategy=cfg.placement.upper())
            try:
                ray.get(pg.ready(), timeout=cfg.timeout_s)
            except ray.exceptions.GetTimeoutError as e:
                remove_placement_group(pg)
                raise LearnerFailed(f"{n} learner ranks ({bundle(resources, opts.get('resources'))} each, "
                                    f"--learner.placement {cfg.placement}) cannot be placed on this cluster: "
                                    f"{ray.cluster_resources()}; lower --learner.world-size") from e
            opts.pop("resources", None)
            actors = [LearnerActor.options(name=names[r], **resources, **opts, scheduling_strategy=
                                           PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r)
                                           ).remote(factory, threads=threads, rank=r, world_size=n)
                      for r in range(n)]
        address, port = ray.get(actors[0].rendezvous.remote(cfg.timeout_s))
        group = cls(actors, cfg.timeout_s, generation=generation, placement_group=pg)
        group.ranks = group.wait([a.join.remote(address, port, device, cfg.timeout_s) for a in actors], "start")
        group.spawn = lambda g: cls.start(factory, cfg, device, resources, threads, g, options, recorder)
        return group

    @property
    def actor(self) -> Any:
        """Rank 0."""
        return self.actors[0]

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def wait(self, refs: list[ray.ObjectRef], what: str) -> list[Any]:
        """Every rank's result, or LearnerFailed naming the first rank that died or the ranks that did
        not answer within the timeout (a rank left waiting in a collective never hangs the run)."""
        rank_of = {r.hex(): i for i, r in enumerate(refs)}
        # one rank can only be slow, not stuck: its death comes back from Ray as an error
        limit = self.timeout_s if len(refs) > 1 else None
        pending, deadline = list(refs), time.monotonic() + (limit or 0.0)
        while pending:
            left = None if limit is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not ready:
                late = sorted(rank_of[r.hex()] for r in pending)
                raise LearnerFailed(f"learner rank(s) {late} did not finish {what} within --learner.timeout-s="
                                    f"{self.timeout_s:g} (raise it if a step can take longer)")
            try:
                ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                raise LearnerFailed(f"{actor_death(e)} (learner rank {rank_of[ready[0].hex()]}, during {what})") from e
        return ray.get(refs)

    def train_step(self, scored: list[list[ray.ObjectRef]]) -> dict[str, float]:
        """All updates of one RL step; `scored` holds, per scored batch, one part per rank (rank r
        fetches only parts r). Blocks until every rank is done -> the step's stats (rank 0's, which
        are every rank's reduced)."""
        refs = [a.train_step.remote(*[parts[r] for parts in scored]) for r, a in enumerate(self.actors)]
        return self.wait(refs, "a learner step")[0]

    def weights(self, version: int) -> ray.ObjectRef:
        """The current policy state dict, published as `version`: ONE object-store ref per version
        (rank 0's; every rank notes the publication)."""
        for a in self.actors[1:]:
            a.weights.remote(version)
        return self.actor.weights.remote(version)

    def save_checkpoint(self, path: str, extra: dict) -> str:
        """Rank 0 writes it (every rank holds the same model, optimizer and stage state); returns its path."""
        return self.wait([self.actor.save_checkpoint.remote(path, extra)], "saving a checkpoint")[0]

    def load_checkpoint(self, path: str) -> dict:
        """Every rank restores it (any world size: the state is the one learner's)."""
        return self.wait([a.load_checkpoint.remote(path) for a in self.actors], "loading a checkpoint")[0]

    def sampling_weights(self, keys: list[str]) -> list[float]:
        return ray.get(self.actor.sampling_weights.remote(keys))

    def init_tracker(self, rewards_by_key: dict[str, list[float]]) -> int:
        return self.wait([a.init_tracker.remote(rewards_by_key) for a in self.actors], "the tracker init")[0]

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)

    def restart(self) -> "LearnerGroup":
        """A new group like this one (after a rank died): this one's actors are ended first."""
        if self.spawn is None:
            raise LearnerFailed("this learner group was not made by LearnerGroup.start: it cannot be restarted")
        self.shutdown()
        return self.spawn(self.generation + 1)


def bundle(resources: dict, custom: dict | None = None) -> dict:
    """One rank's placement-group bundle from its actor request."""
    out = {"CPU": resources.get("num_cpus", 1)}
    if resources.get("num_gpus"):
        out["GPU"] = resources["num_gpus"]
    return {**out, **(custom or {})}
