"""The RL driver: moves only object refs between the actor groups and keeps the loop's state.

    step k:  weights_ref = learner.weights(version)            # one put per policy version
             gen      = rollouts.generate(prompts, weights_ref, version, seed, call)
             scored   = rewards.score(gen)                      # refs passed, never values
             stats    = ray.get(learner.train_step(scored))     # the driver gets only stats

With `off_policy`, rollouts for step k+1 are issued (with the weights of step k-1's update)
before the learner finishes step k: generation and learning overlap, staleness is one version,
and the learner uses the rollout's (behaviour-policy) logprobs as the PPO "old" for those batches.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray

from learner.learner import find_checkpoint
from learner.group import LearnerFailed
from recipes.actors import ActorGroups
from recipes.eval_stats import PASS_AT, outcome_stats
from contract.batch import EPISODE_COUNTS, RolloutBatch

log = logging.getLogger(__name__)


def batch_stats(batch: RolloutBatch) -> dict[str, float]:
    """Small stats of a scored batch."""
    info = {k: float(v) for k, v in batch.reward_info.items() if isinstance(v, (int, float))}
    info.update(reward_mean=float(batch.rewards.mean()), rows=float(len(batch)),
                response_length=float(batch.response_mask.sum(1).mean()))
    if batch.multiturn:   # tool-use episodes: how they used the tools
        info.update({k: float(getattr(batch, k).float().mean()) for k in EPISODE_COUNTS})
    return info


@ray.remote(num_cpus=0)
def outcomes(batch: RolloutBatch) -> tuple[dict[str, float], list[int], list[float]]:
    """(batch_stats(batch), each row's prompt uid, each row's 1/0 from the verifier), computed where the
    batch lives: what an evaluation needs for slices and pass@k, a few numbers per row."""
    return batch_stats(batch), batch.group_uid.tolist(), batch.correct.tolist()


@ray.remote(num_cpus=0)
def summarize_groups(batch: RolloutBatch) -> dict[str, list[float]]:
    """{prompt key: [rewards of its samples]} of a scored batch (for SPO's offline tracker init)."""
    out: dict[str, list[float]] = {}
    for key, r in zip(batch.prompt_keys, batch.rewards.tolist()):
        out.setdefault(key, []).append(r)
    return out


@dataclass
class DriverConfig:
    steps: int = 120
    """RL steps (each: rollout -> reward -> the learner's updates)."""
    prompts_per_step: int = 32
    """Prompts per step, split across rollout workers (each gets group-size samples)."""
    off_policy: bool = False
    """Generate step k+1 while learning step k (one version stale)."""
    eval_every: int = 20
    """Evaluate held-out greedy accuracy (per slice too) every this many steps, for the curve (0: only
    before and after, which also report the sampled policy and pass@k)."""
    checkpoint_every: int = 0
    """Save a learner checkpoint (with the SPO tracker and the driver's position) every N steps (0: never)."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.prompts_per_step < 1 or self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError(f"--driver.steps={self.steps} must be >= 0, --driver.prompts-per-step="
                             f"{self.prompts_per_step} >= 1, eval-every and checkpoint-every >= 0")


class RLDriver:
    def __init__(self, cfg: DriverConfig, actors: ActorGroups, prompts: list[dict], eval_prompts: list[dict],
                 sampler: Any, seed: int, on_step: Callable[[int, dict], None] | None = None,
                 checkpoint_dir: str | None = None, restarts: int = 0,
                 on_restore: Callable[[int], None] | None = None):
        if not prompts:
            raise ValueError("RLDriver: no training prompts")
        self.cfg, self.actors, self.sampler, self.seed = cfg, actors, sampler, seed
        self.prompts = prompts
        self.eval_prompts = [dict(p, uid=i) for i, p in enumerate(eval_prompts)]
        self.on_step = on_step
        self.checkpoint_dir = checkpoint_dir
        self.restarts_left = restarts   # learner groups restarted from the last checkpoint when a rank dies
        self.on_restore = on_restore    # told the step a restart went back to (its metrics after it are redone)
        self.uid_base = 0          # uids stay unique across steps (a prompt may recur)
        self.calls: dict[str, int] = {}   # rollout calls so far per stream (train, eval, ...): seeds derive from them
        self.version = 0           # serial of the weights ref the rollouts sample with
        self.weights_ref = actors.learner.weights(self.version)
        self.step_count = 0
        self.pending: tuple[list[ray.ObjectRef], int] | None = None   # (scored refs, their version)
        self.resume_state: dict | None = None    # the state just before `pending` was drawn
        self.extra: dict[str, Any] = {}           # the recipe's own values to checkpoint (e.g. accuracy before)

    # ------------------------------------------------------------------ one round of refs
    def next_prompts(self, n: int) -> list[dict]:
        out = []
        for i in self.sampler.next(n):
            out.append(dict(self.prompts[i], uid=self.uid_base))
            self.uid_base += 1
        return out

    def launch(self, prompts: list[dict], sampling: dict | None = None, stream: str = "train") -> list[ray.ObjectRef]:
        """rollout -> reward for `prompts` with the current weights; returns scored-batch refs. Each
        stream (training rollouts, evaluations, ...) has its own call counter, so evaluating more or
        less often never shifts the seeds of the training rollouts."""
        return self.actors.rewards.score(self._generate(prompts, sampling, stream))

    def _generate(self, prompts: list[dict], sampling: dict | None, stream: str) -> list[ray.ObjectRef]:
        call = self.calls.get(stream, 0)
        self.calls[stream] = call + 1
        return self.actors.rollouts.generate(prompts, self.weights_ref, self.version, (self.seed, stream, call), sampling,
                                             call=call)

    def launch_training(self) -> list[list[ray.ObjectRef]]:
        """The next training prompts through rollout -> reward, each scored batch cut into one part per
        learner rank -> refs [batch][rank]."""
        gen = self._generate(self.next_prompts(self.cfg.prompts_per_step), None, "train")
        return self.actors.rewards.score_parts(gen, self.actors.learner.world_size)

    def _launch_step(self) -> None:
        self.resume_state = self._state()
        self.pending = (self.launch_training(), self.version)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, max_new_tokens: int | None = None, samples: int = 0, prompts: list[dict] | None = None,
                 prefix: str = "eval") -> dict[str, float]:
        """Exact-match accuracy on the held-out prompts: greedy (one answer each) and, with
        `samples` > 0, of the policy itself (that many samples each at the rollout temperature,
        the distribution RL optimises) with pass@4 and pass@8 of those samples. `prompts` (default:
        the driver's held-out prompts) with `prefix` naming the keys (<prefix>_accuracy,
        <prefix>_sampled_accuracy, <prefix>_sampled_pass_at_8, ...), each also per slice
        (<prefix>_accuracy_d3) when the prompts name more than one; multi-turn batches add
        <prefix>_turns, _tool_calls and _tool_errors per episode."""
        prompts = self.eval_prompts if prompts is None else [dict(p, uid=i) for i, p in enumerate(prompts)]
        if not prompts:
            return {}
        slices = {p["uid"]: p.get("slice", "") for p in prompts}
        modes = {prefix: {"n": 1, "temperature": 0.0}}
        if samples:
            modes[f"{prefix}_sampled"] = {"n": samples}
        refs = {}
        for name, sampling in modes.items():
            if max_new_tokens:
                sampling["max_new_tokens"] = max_new_tokens
            refs[name] = [outcomes.remote(r) for r in self.launch(prompts, sampling, stream=name)]
        out = {}
        for name, parts in ((n, ray.get(r)) for n, r in refs.items()):
            stats = [s for s, _, _ in parts]
            rows = sum(s["rows"] for s in stats)
            mean = lambda key: sum(s.get(key, 0.0) * s["rows"] for s in stats) / rows  # noqa: E731
            correct: dict[int, list[float]] = {}
            for _, uids, right in parts:
                for u, c in zip(uids, right):
                    correct.setdefault(u, []).append(c)
            out.update(outcome_stats(name, correct, slices, PASS_AT))
            out.update({f"{name}_reward": mean("reward_mean"), f"{name}_response_length": mean("response_length")})
            out.update({f"{name}_{k}": mean(k) for k in EPISODE_COUNTS if all(k in s for s in stats)})
        return out

    # ------------------------------------------------------------------ training
    def step(self) -> dict[str, float]:
        """One RL step: train on the batch in flight (launching it first if none is), publish the new
        weights, and launch the next step's rollouts (before the update when off-policy)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        if self.pending is None:
            self._launch_step()
        scored, scored_version = self.pending
        self.pending = None
        last = self.step_count + 1 >= cfg.steps
        if cfg.off_policy and not last:
            self._launch_step()   # sampled with the current (soon previous) version
        stats = self.actors.learner.train_step(scored)
        refills = 0
        while stats.get("need_more"):  # zero-variance groups were dropped: refill the batch
            refills += 1
            stats = self.actors.learner.train_step(self.launch_training())
        self.version += 1
        self.weights_ref = self.actors.learner.weights(self.version)
        self.step_count += 1
        if not cfg.off_policy and not last:
            self._launch_step()
        # versions between the weights that sampled this step's batch and those it trained (0 on-policy)
        stats.update(refills=refills, step_seconds=time.perf_counter() - t0, version=self.version,
                     staleness=float(self.version - 1 - scored_version))
        if cfg.eval_every and self.step_count % cfg.eval_every == 0 and not last:
            stats.update(self.evaluate())
        if cfg.checkpoint_every and self.checkpoint_dir and self.step_count % cfg.checkpoint_every == 0:
            self.actors.learner.save_checkpoint(self.checkpoint_dir, self.state_dict())
        if self.on_step:
            self.on_step(self.step_count, stats)
        return stats

    def run(self) -> list[dict]:
        """Steps to the end; a learner rank that dies costs the steps since the last checkpoint."""
        history: list[dict] = []
        first = self.step_count
        while self.step_count < self.cfg.steps:
            try:
                history.append(self.step())
            except LearnerFailed as e:
                self.recover(e)
                del history[self.step_count - first:]
        return history

    def recover(self, error: LearnerFailed) -> None:
        """A new learner group from the last checkpoint, the driver back at its step (prompt stream,
        seeds, weights version); rollouts in flight are dropped. Without a checkpoint or restarts
        left, `error` goes on up."""
        found = find_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        if self.restarts_left <= 0 or found is None:
            raise error
        self.restarts_left -= 1
        print(f"[learner] {error}; restarting the learner group from {found} ({self.restarts_left} restart(s) "
              f"left)", flush=True)
        self.actors.learner = self.actors.learner.restart()
        self.pending = None
        self.load_state_dict(self.actors.learner.load_checkpoint(self.checkpoint_dir))
        print(f"[learner] restarted: {self.actors.learner.world_size} rank(s), continuing after step "
              f"{self.step_count}", flush=True)
        if self.on_restore is not None:
            self.on_restore(self.step_count)

    # ------------------------------------------------------------------ resume
    def _state(self) -> dict:
        return {"step": self.step_count, "sampler": self.sampler.state_dict(), "uid_base": self.uid_base,
                "calls": dict(self.calls), "version": self.version, "extra": dict(self.extra)}

    def state_dict(self) -> dict:
        """Everything the next step depends on besides the learner: the position in the prompt stream,
        the rollout call counters (seeds), uids, the weights version. Taken as it was before the rollouts
        already in flight were drawn, so a resumed run draws and samples them again, identically (on-policy;
        off-policy, the resumed run samples that batch with the checkpoint's weights: staleness 0, not 1)."""
        state = self.resume_state if self.pending is not None else self._state()
        return {**state, "step": self.step_count, "extra": dict(self.extra)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.uid_base, self.calls = state["step"], state["uid_base"], dict(state["calls"])
        self.version, self.extra = state["version"], dict(state.get("extra", {}))
        self.sampler.load_state_dict(state["sampler"])
        self.weights_ref = self.actors.learner.weights(self.version)
