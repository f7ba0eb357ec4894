"""The RL driver: wires learner, rollout and reward actors and moves only object refs.

    step k:  weights_ref = learner.weights.remote(version)       # one put per policy version
             gen_i    = rollout_i.generate.remote(prompts_i, [weights_ref], version)
             scored_i = reward_i.score.remote(gen_i)              # refs passed, never values
             stats    = ray.get(learner.train_step.remote(*scored))  # the driver gets only stats

With `off_policy`, rollouts for step k+1 are issued (with the weights of step k-1's update)
before the learner finishes step k: generation and learning overlap, staleness is one version,
and the learner uses the rollout's (behaviour-policy) logprobs as the PPO "old" for those batches.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray

from rollout.batch import RolloutBatch

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
def summarize(batch: RolloutBatch) -> dict[str, float]:
    """Small stats of a scored batch, computed where the batch lives (not on the driver)."""
    info = {k: float(v) for k, v in batch.reward_info.items() if isinstance(v, (int, float))}
    info.update(reward_mean=float(batch.rewards.mean()), rows=float(len(batch)),
                response_length=float(batch.response_mask.sum(1).mean()))
    return info


@ray.remote(num_cpus=0)
def summarize_groups(batch: RolloutBatch) -> dict[str, list[float]]:
    """{prompt key: [rewards of its samples]} of a scored batch (for SPO's offline tracker init)."""
    out: dict[str, list[float]] = {}
    for key, r in zip(batch.prompt_keys, batch.rewards.tolist()):
        out.setdefault(key, []).append(r)
    return out


@dataclass
class DriverConfig:
    steps: int = 40
    """RL steps (each: rollout -> reward -> several learner updates)."""
    prompts_per_step: int = 16
    """Prompts per step, split across rollout workers (each gets group_size samples)."""
    off_policy: bool = False
    """Generate step k+1 while learning step k (one version stale)."""
    eval_every: int = 0
    """Evaluate held-out accuracy every this many steps (0: only before and after)."""
    prompt_sampling: str = "shuffle"
    """shuffle: epochs over a seeded permutation; spo: weighted by the learner's SPO tracker."""
    checkpoint_every: int = 0
    """Save a learner checkpoint (incl. SPO tracker and driver position) every N steps (0: never)."""
    seed: int = 0
    """Seed of prompt sampling."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.prompts_per_step < 1:
            raise ValueError(f"DriverConfig: steps={self.steps} must be >= 0 and "
                             f"prompts_per_step={self.prompts_per_step} >= 1")
        if self.prompt_sampling not in ("shuffle", "spo"):
            raise ValueError(f"DriverConfig.prompt_sampling={self.prompt_sampling!r}: shuffle or spo")


class RLDriver:
    def __init__(self, cfg: DriverConfig, learner: Any, rollouts: list, rewards: list,
                 prompts: list[dict], eval_prompts: list[dict],
                 on_step: Callable[[int, dict], None] | None = None, checkpoint_dir: str | None = None):
        if not prompts:
            raise ValueError("RLDriver: no training prompts")
        self.cfg, self.learner, self.rollouts, self.rewards = cfg, learner, rollouts, rewards
        self.prompts = [dict(p, uid=i) for i, p in enumerate(prompts)]
        self.eval_prompts = [dict(p, uid=i) for i, p in enumerate(eval_prompts)]
        self.on_step = on_step
        self.checkpoint_dir = checkpoint_dir
        self.rng = random.Random(cfg.seed)
        self.order: list[int] = []
        self.uid_base = 0          # uids stay unique across steps (a prompt may recur)
        self.version = 0           # serial of the weights ref the rollouts sample with
        self.weights_ref = learner.weights.remote(self.version)
        self.step = 0

    # ------------------------------------------------------------------ prompt sampling
    def _next_prompts(self, n: int) -> list[dict]:
        if self.cfg.prompt_sampling == "spo":
            keys = [p["key"] for p in self.prompts]
            weights = ray.get(self.learner.call.remote("stage.tracker.sampling_weights", keys)).tolist()
            picked = self.rng.choices(range(len(self.prompts)), weights=weights, k=n)
        else:
            picked = []
            while len(picked) < n:
                if not self.order:
                    self.order = list(range(len(self.prompts)))
                    self.rng.shuffle(self.order)
                picked.append(self.order.pop())
        out = []
        for i in picked:
            out.append(dict(self.prompts[i], uid=self.uid_base))
            self.uid_base += 1
        return out

    # ------------------------------------------------------------------ one round of refs
    def _launch(self, prompts: list[dict], sampling: dict | None = None) -> list[ray.ObjectRef]:
        """rollout -> reward for `prompts`, split over the workers; returns scored-batch refs."""
        k = len(self.rollouts)
        shards = [prompts[i::k] for i in range(k)]
        scored = []
        for i, shard in enumerate(shards):
            if not shard:
                continue
            gen = self.rollouts[i].generate.remote(shard, [self.weights_ref], self.version, sampling)
            scored.append(self.rewards[i % len(self.rewards)].score.remote(gen))
        return scored

    def _sync_weights(self) -> None:
        self.version += 1
        self.weights_ref = self.learner.weights.remote(self.version)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, max_new_tokens: int | None = None, samples: int = 0) -> dict[str, float]:
        """Exact-match accuracy on the held-out prompts: greedy (one answer each) and, with
        `samples` > 0, of the policy itself (that many samples each at the rollout temperature,
        the distribution RL optimises)."""
        if not self.eval_prompts:
            return {}
        modes = {"eval": {"n": 1, "temperature": 0.0}}
        if samples:
            modes["eval_sampled"] = {"n": samples}
        refs = {}
        for name, sampling in modes.items():
            if max_new_tokens:
                sampling["max_new_tokens"] = max_new_tokens
            refs[name] = [summarize.remote(r) for r in self._launch(self.eval_prompts, sampling)]
        out = {}
        for name, stats in ((n, ray.get(r)) for n, r in refs.items()):
            rows = sum(s["rows"] for s in stats)
            mean = lambda key: sum(s.get(key, 0.0) * s["rows"] for s in stats) / rows  # noqa: E731
            out.update({f"{name}_accuracy": mean("accuracy"), f"{name}_reward": mean("reward_mean"),
                        f"{name}_response_length": mean("response_length")})
        return out

    # ------------------------------------------------------------------ training
    def run(self) -> list[dict]:
        cfg = self.cfg
        history = []
        pending = self._launch(self._next_prompts(cfg.prompts_per_step))
        pending_version = self.version   # weights version the pending rollouts sample with
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            scored, scored_version = pending, pending_version
            if cfg.off_policy and self.step + 1 < cfg.steps:
                # issued before this step's update: sampled with the previous version
                pending = self._launch(self._next_prompts(cfg.prompts_per_step))
                pending_version = self.version
            stats = ray.get(self.learner.train_step.remote(*scored))
            refills = 0
            while stats.get("need_more"):  # zero-variance groups were dropped: refill the batch
                refills += 1
                stats = ray.get(self.learner.train_step.remote(*self._launch(self._next_prompts(cfg.prompts_per_step))))
            self._sync_weights()
            self.step += 1
            if not cfg.off_policy and self.step < cfg.steps:
                pending = self._launch(self._next_prompts(cfg.prompts_per_step))
                pending_version = self.version
            # versions between the weights that sampled this step's batch and those it trained (0 on-policy)
            staleness = float(self.version - 1 - scored_version)
            stats.update(refills=refills, step_seconds=time.perf_counter() - t0, version=self.version,
                         staleness=staleness)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                stats.update(self.evaluate())
            if cfg.checkpoint_every and self.checkpoint_dir and self.step % cfg.checkpoint_every == 0:
                ray.get(self.learner.call.remote("save_checkpoint", self.checkpoint_dir, self.state_dict()))
            history.append(stats)
            if self.on_step:
                self.on_step(self.step, stats)
        return history

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"step": self.step, "rng": _rng_to_json(self.rng.getstate()), "order": list(self.order),
                "uid_base": self.uid_base, "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.order, self.uid_base = state["step"], list(state["order"]), state["uid_base"]
        self.version = state["version"]
        self.rng.setstate(_rng_from_json(state["rng"]))
        self._sync_weights()


def _rng_to_json(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _rng_from_json(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])
