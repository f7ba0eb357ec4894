"""RewardWorker (plain class) and RewardActor (its Ray actor): RolloutBatch in, RolloutBatch
with `rewards` [B] float32 and `reward_info` out.

    worker = RewardWorker(RewardConfig(format_weight=0.1))        # no Ray needed
    scored = worker.score(batch)

    actor = RewardActor.options(num_cpus=1).remote(RewardConfig())
    scored_ref = actor.score.remote(gen_ref)   # pass the ref: Ray resolves it on the actor,
                                               # the driver never holds the batch
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import ray
import torch

from contract.batch import RolloutBatch

from .scorers import CombinedScorer, Component, FormatScorer, MathVerifierScorer, RewardModelScorer
from .tool_scorers import ExtraTurnPenalty, ToolFormatScorer
from .verifier import AnswerMode

__all__ = ["RewardConfig", "RewardWorker", "RewardActor", "build_scorer"]


@dataclass
class RewardConfig:
    math_weight: float = 1.0
    """Weight of the exact-answer verifier (1.0 correct / 0.0 wrong). The math component is
    always computed, even at weight 0, because it gives `accuracy`."""
    format_weight: float = 0.1
    """Weight of `verifier.format_reward` (1.0 clean `#### N` final line, 0.5 partial); 0 drops it."""
    answer_mode: str = "auto"
    """How answers are extracted from responses: hash | boxed | last_number | auto."""
    rm_path: str | None = None
    """Reward-model checkpoint (loaded with minimind.checkpoint.load_score_model); None: no RM."""
    rm_weight: float = 0.0
    """Weight of the reward-model score; the RM is loaded only if rm_path is set and this is != 0."""
    rm_batch_size: int = 64
    """Rows per reward-model forward."""
    rm_device: str | None = None
    """Device for the reward model; None: cuda if available, else cpu."""
    timeout_s: float | None = 5.0
    """Per-component, per-call time limit in seconds (None or 0: no limit)."""
    fallback_reward: float = 0.0
    """Reward given to rows whose scorer raised, timed out or returned a non-finite value."""
    tool_format_weight: float = 0.0
    """Multi-turn episodes: weight of the tool-call format reward ((ok - failed calls) / calls, in
    [-1, 1]; 0 for episodes without calls); 0 drops it."""
    extra_turn_penalty: float = 0.0
    """Multi-turn episodes: reward lost per assistant turn beyond the first; 0 drops it."""

    def __post_init__(self) -> None:
        AnswerMode(self.answer_mode)  # ValueError names the bad value
        for name in ("math_weight", "format_weight", "rm_weight", "fallback_reward", "tool_format_weight",
                     "extra_turn_penalty"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"RewardConfig.{name}={v!r}: must be a finite number")
        if self.timeout_s is not None and not (self.timeout_s >= 0):
            raise ValueError(f"RewardConfig.timeout_s={self.timeout_s!r}: must be >= 0 or None")
        if self.rm_weight != 0 and not self.rm_path:
            raise ValueError(f"RewardConfig.rm_weight={self.rm_weight}: needs rm_path")
        if self.rm_batch_size <= 0:
            raise ValueError(f"RewardConfig.rm_batch_size={self.rm_batch_size}: must be positive")


def _load_reward_model(cfg: RewardConfig) -> RewardModelScorer:
    from minimind.checkpoint import load_score_model  # lazy: reward/ imports without it

    device = cfg.rm_device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_score_model(cfg.rm_path, device=device).to(device).eval()
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", 0) or 0
    return RewardModelScorer(model, tokenizer_pad_id=pad_id, batch_size=cfg.rm_batch_size, device=device)


def build_scorer(cfg: RewardConfig) -> CombinedScorer:
    """math (always; gives accuracy) + format, tool format, extra-turn penalty (each if its weight != 0)
    + reward model (if configured)."""
    comps = [Component("math", MathVerifierScorer(cfg.answer_mode), cfg.math_weight)]
    if cfg.format_weight != 0:
        comps.append(Component("format", FormatScorer(), cfg.format_weight))
    if cfg.tool_format_weight != 0:
        comps.append(Component("tool_format", ToolFormatScorer(), cfg.tool_format_weight))
    if cfg.extra_turn_penalty != 0:
        comps.append(Component("extra_turns", ExtraTurnPenalty(), cfg.extra_turn_penalty))
    if cfg.rm_path and cfg.rm_weight != 0:
        comps.append(Component("rm", _load_reward_model(cfg), cfg.rm_weight))
    return CombinedScorer(comps, timeout_s=cfg.timeout_s or None, fallback_reward=cfg.fallback_reward)


class RewardWorker:
    """Scores RolloutBatches. `RewardWorker(config)` builds the scorers from a RewardConfig;
    `RewardWorker(config, components=[(name, scorer, weight), ...])` uses custom scorers
    (timeout and fallback still from config)."""

    def __init__(self, config: RewardConfig | None = None,
                 components: Sequence[Component | tuple] | None = None):
        self.config = config or RewardConfig()
        if components is not None:
            self.scorer = CombinedScorer(components, timeout_s=self.config.timeout_s or None,
                                         fallback_reward=self.config.fallback_reward)
        else:
            self.scorer = build_scorer(self.config)
        self._batches = 0
        self._rows = 0
        self._seconds = 0.0

    def score(self, batch: RolloutBatch) -> RolloutBatch:
        """`batch` with rewards [B] float32, correct [B] (the math verifier's 1/0) and reward_info: score/<name>, errors/<name>,
        timeouts/<name>, seconds/<name>, errors/total, accuracy, reward/mean|std|min|max,
        seconds, rows, policy_version."""
        t0 = time.perf_counter()
        rewards, info, correct = self.scorer.score(batch)
        dt = time.perf_counter() - t0
        info["seconds"] = dt
        info["rows"] = len(batch)
        info["policy_version"] = batch.policy_version
        self._batches += 1
        self._rows += len(batch)
        self._seconds += dt
        return batch.with_rewards(rewards, info, correct)

    def score_parts(self, batch: RolloutBatch, parts: int, offset: int = 0) -> list[RolloutBatch]:
        """`score(batch)` cut into `parts` of whole groups (RolloutBatch.shard), one per learner rank."""
        return self.score(batch).shard(parts, offset)

    def stats(self) -> dict[str, Any]:
        """Cumulative counters since construction (batches, rows, seconds, errors, timeouts)."""
        s = self.scorer
        return {"batches": self._batches, "rows": self._rows, "seconds": self._seconds,
                "errors": dict(s.error_counts), "timeouts": dict(s.timeout_counts),
                "components": {c.name: c.weight for c in s.components}, "config": asdict(self.config)}

    def ping(self) -> bool:
        return True


RewardActor = ray.remote(RewardWorker)
"""Ray actor of RewardWorker; set resources with `RewardActor.options(num_cpus=..., num_gpus=...)`."""
