"""Rewards for RL: rule-based math verifiers, a batched reward-model scorer, a guarded weighted
combination, and the RewardActor that scores RolloutBatches on Ray.

`RewardActor`, `RewardWorker`, `RewardConfig` and `build_scorer` live in reward.actor (which
imports ray); they are loaded lazily here so that `import reward` stays light.
"""
from __future__ import annotations

from typing import Any

from .scorers import (CombinedScorer, Component, ComponentResult, FormatScorer, MathVerifierScorer,
                      RewardModelScorer, RowScorer, Scorer, run_guarded)
from .verifier import AnswerMode, answers_match, extract_answer, format_reward, math_reward, parse_number

_LAZY = {"RewardActor", "RewardWorker", "RewardConfig", "build_scorer"}

__all__ = [
    "AnswerMode", "extract_answer", "parse_number", "answers_match", "math_reward", "format_reward",
    "Scorer", "RowScorer", "MathVerifierScorer", "FormatScorer", "RewardModelScorer",
    "Component", "ComponentResult", "CombinedScorer", "run_guarded", *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import actor
        return getattr(actor, name)
    raise AttributeError(f"module 'reward' has no attribute {name!r}")
