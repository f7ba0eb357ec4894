"""The Learner as a Ray actor: same object, remote methods. Batches arrive as object refs
(Ray resolves top-level ref arguments on the actor), and `weights()` returns a state dict that
stays in the object store until a rollout worker asks for it."""
from __future__ import annotations

from typing import Any, Callable

import ray
import torch

from rl.batch import RolloutBatch
from runtime import tune_malloc


def rollout_stats(batches: tuple[RolloutBatch, ...]) -> dict[str, float]:
    """Phase timings and reward summaries carried by the batches (workers run in parallel, so
    phase time is the slowest worker's)."""
    rows = sum(len(b) for b in batches)
    new_tokens = sum(b.meta.get("new_tokens", 0) for b in batches)
    gen_s = max(b.meta.get("generate_seconds", 0.0) for b in batches)
    out = {"generate_seconds": gen_s, "new_tokens": float(new_tokens),
           "tokens_per_second": new_tokens / gen_s if gen_s > 0 else 0.0,
           "weight_sync_seconds": max(b.meta.get("weight_sync_seconds", 0.0) for b in batches),
           "reward_seconds": max(float(b.reward_info.get("seconds", 0.0)) for b in batches)}
    for key in ("accuracy", "errors/total"):
        vals = [(float(b.reward_info[key]), len(b)) for b in batches if key in b.reward_info]
        if vals:
            out[key] = sum(v * n for v, n in vals) / rows
    if all(b.multiturn for b in batches):   # tool-use episodes: turns and calls per episode
        for key in ("turns", "tool_calls", "tool_errors"):
            out[key] = float(sum(getattr(b, key).sum() for b in batches)) / rows
    return out


class LearnerWorker:
    """Builds its Learner on the actor from a factory (so the model is created where it trains)."""

    def __init__(self, factory: Callable[[], Any], threads: int = 0):
        tune_malloc()  # reuse freed [B, R, V] buffers instead of mmap/munmap per step
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS to the actor's CPU share
        self.learner = factory()
        self.published = -1   # version serial of the last weights() handed to rollouts
        self.dirty = False    # trained since that publication

    def train_step(self, *batches: RolloutBatch) -> dict[str, float]:
        # Sampled with weights other than the current ones (off-policy, or after a refill): the
        # rollout's own logprobs are the behaviour policy, so they become the PPO "old".
        stale = self.dirty or any(b.policy_version != self.published for b in batches)
        batch = batches[0] if len(batches) == 1 else RolloutBatch.concat(list(batches))
        batch.stale = stale
        stats = self.learner.train_step(batch)
        self.dirty = self.dirty or stats.get("updates", 0) > 0
        stats["stale"] = float(stale)
        stats.update(rollout_stats(batches))
        stats["version"] = self.learner.version
        return stats

    def weights(self, version: int | None = None) -> dict:
        """Current policy state dict, published as `version` (the driver's serial)."""
        if version is not None:
            self.published, self.dirty = version, False
        return self.learner.weights()

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
