"""Pure, tensor-level losses (no model inside). Every loss returns ``(loss, stats)`` where
``stats`` is a dict of detached python floats. See each module for the exact formulas."""
from .core import (
    AggMode,
    KLKind,
    aggregate,
    entropy_from_logits,
    global_counts,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from .config import ClipConfig, KLConfig
from .distill import distill_loss
from .dpo import dpo_loss, sequence_logprob
from .grpo import (
    AdvScale,
    ClippedPolicyLoss,
    GRPOLoss,
    group_advantages,
    kl_penalized_rewards,
    kl_reward_penalty,
    policy_loss,
    zero_variance_groups,
)
from .lm import IGNORE_INDEX, lm_loss
from .ppo import PPOLoss, gae, ppo_token_rewards, value_loss
from .rm import bradley_terry_loss
from .spo import SPOLoss, SPOTracker, policy_drift, spo_advantages

__all__ = [
    "AggMode", "KLKind", "AdvScale", "IGNORE_INDEX", "ClipConfig", "KLConfig", "ClippedPolicyLoss",
    "aggregate", "entropy_from_logits", "global_counts", "kl_estimate", "logprobs_from_logits",
    "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    "lm_loss", "dpo_loss", "sequence_logprob", "distill_loss", "bradley_terry_loss",
    "group_advantages", "zero_variance_groups", "policy_loss", "kl_reward_penalty",
    "kl_penalized_rewards", "GRPOLoss",
    "gae", "ppo_token_rewards", "value_loss", "PPOLoss",
    "SPOTracker", "SPOLoss", "spo_advantages", "policy_drift",
]
