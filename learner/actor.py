"""The Learner as a Ray actor: same object, remote methods. Batches arrive as object refs
(Ray resolves top-level ref arguments on the actor), and `weights()` returns a state dict that
stays in the object store until a rollout worker asks for it. In a learner group (recipes.actors) each
actor is one data-parallel rank: it joins the group's process group, then builds its Learner."""
from __future__ import annotations

import os
from typing import Any, Callable

import ray
import torch

from contract.batch import RolloutBatch
from runtime import tune_malloc

from .distributed import init_comm, rendezvous_store
from .record import BatchRecorder


def rollout_stats(batches: tuple[RolloutBatch, ...]) -> dict[str, float]:
    """Phase timings and reward summaries carried by the batches (workers run in parallel, so
    phase time is the slowest worker's). A learner rank's share of a batch carries the whole batch's
    (`meta["batch_rows"]` rows)."""
    size = lambda b: b.meta.get("batch_rows", len(b))  # noqa: E731
    rows = sum(size(b) for b in batches) or 1
    new_tokens = sum(b.meta.get("new_tokens", 0) for b in batches)
    gen_s = max(b.meta.get("generate_seconds", 0.0) for b in batches)
    out = {"generate_seconds": gen_s, "new_tokens": float(new_tokens),
           "tokens_per_second": new_tokens / gen_s if gen_s > 0 else 0.0,
           "weight_sync_seconds": max(b.meta.get("weight_sync_seconds", 0.0) for b in batches),
           "reward_seconds": max(float(b.reward_info.get("seconds", 0.0)) for b in batches)}
    for key in ("accuracy", "errors/total"):
        vals = [(float(b.reward_info[key]), size(b)) for b in batches if key in b.reward_info]
        if vals:
            out[key] = sum(v * n for v, n in vals) / rows
    return out


class LearnerWorker:
    """Builds its Learner on the actor from a factory (so the model is created where it trains)."""

    def __init__(self, factory: Callable[[], Any], threads: int = 0, rank: int = 0, world_size: int = 1,
                 recorder: BatchRecorder | None = None):
        tune_malloc()  # reuse freed [B, R, V] buffers instead of mmap/munmap per step
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS to the actor's CPU share
        self.factory, self.rank, self.world_size = factory, rank, world_size
        self.recorder = recorder   # writes every batch it trains on, with the weights it starts from
        self.learner = factory() if world_size == 1 else None   # a rank builds it once the group has joined
        self.store = None     # rank 0 of a group: the rendezvous store it serves

    def rendezvous(self, timeout_s: float) -> tuple[str, int]:
        """Rank 0: the address and port of the rendezvous store it serves (held open: see rendezvous_store);
        a learner alone needs none (port 0)."""
        address = ray.util.get_node_ip_address()
        if self.world_size == 1:
            return address, 0
        self.store = rendezvous_store(address, timeout_s)
        return address, self.store.port

    def join(self, address: str, port: int, device: str, timeout_s: float) -> dict[str, Any]:
        """Join the group's process group (every rank at once), then build the Learner on this rank.
        Returns where this rank runs."""
        comm = init_comm(self.rank, self.world_size, address, port, device, timeout_s, store=self.store)
        if self.learner is None:
            self.learner = self.factory()
        self.learner.comm = comm
        where = {"rank": self.rank, "pid": os.getpid()}
        if ray.is_initialized():
            where.update(ip=ray.util.get_node_ip_address(), node_id=ray.get_runtime_context().get_node_id())
        return where

    def train_step(self, *batches: RolloutBatch) -> dict[str, float]:
        # the batches are read, never written: row ids and policy versions come from their producers
        batch = batches[0] if len(batches) == 1 else RolloutBatch.concat(list(batches))
        stale = self.learner.is_stale(batch)   # sampled with other weights (off-policy, or after a refill)
        record = self.recorder.save(self.learner, batch, stale) if self.recorder is not None else None
        stats = self.learner.train_step(batch)
        if record is not None:
            self.recorder.finish(record, stats)
        stats["stale"] = float(stale)
        stats.update(rollout_stats(batches))
        stats["version"] = self.learner.version
        return stats

    def weights(self, version: int | None = None) -> dict | None:
        """Current policy state dict, published as `version` (the driver's serial). Every rank of a
        group notes the publication; rank 0 returns the weights (the others None)."""
        if version is not None:
            self.learner.publish(version)
        return self.learner.weights() if self.rank == 0 else None

    def fit(self, batches: Any, steps: int, run_dir: str, **loop: Any) -> tuple[dict[str, float], dict | None]:
        """A supervised run on this rank (learner.supervised.train_loop over its rows of every batch)
        -> (last stats, the final weights from rank 0; None from the others)."""
        from .supervised import train_loop

        stats = train_loop(self.learner, batches, steps, run_dir, **loop)
        return stats, (self.learner.weights() if self.rank == 0 else None)

    def version(self) -> int:
        return self.learner.version

    def save_checkpoint(self, path: str, extra: dict) -> str:
        """Learner, optimizer, RNG and stage state + the driver's `extra` (atomic)."""
        return str(self.learner.save_checkpoint(path, extra))

    def load_checkpoint(self, path: str) -> dict:
        """Restore a checkpoint; returns the driver's `extra`."""
        return self.learner.load_checkpoint(path)

    def _tracker_stage(self) -> Any:
        if not hasattr(self.learner.stage, "tracker"):
            raise TypeError(f"stage {self.learner.stage.name!r} has no SPO tracker")
        return self.learner.stage

    def sampling_weights(self, keys: list[str]) -> list[float]:
        """SPO: prompt sampling weights from the learner's tracker."""
        return self._tracker_stage().tracker.sampling_weights(keys).tolist()

    def init_tracker(self, rewards_by_key: dict[str, list[float]]) -> int:
        """SPO: offline tracker initialisation from a few rewards per prompt."""
        return self._tracker_stage().init_tracker(rewards_by_key)


LearnerActor = ray.remote(LearnerWorker)
