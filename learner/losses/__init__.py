"""Pure, tensor-level losses (no model inside). Every loss returns ``(loss, stats)`` where
``stats`` is a dict of detached python floats. See each module for the exact formulas."""
from .core import (
    AggMode,
    KLKind,
    aggregate,
    apply_weights,
    entropy_from_logits,
    global_counts,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from .cispo import CISPOLoss, population_group_advantages
from .config import ClipConfig, KLConfig
from .dapo import DAPOLoss, overlong_reward
from .distill import distill_loss
from .dpo import dpo_loss, sequence_logprob
from .dr_grpo import DrGRPOLoss
from .family import POLICY_LOSSES, PolicyLoss, PolicyLossName, dynamic_sampling, make_policy_loss
from .grpo import (
    AdvScale,
    ClippedPolicyLoss,
    KLTerm,
    GRPOLoss,
    group_advantages,
    kl_penalized_rewards,
    kl_reward_penalty,
    policy_loss,
    zero_variance_groups,
)
from .gspo import GSPOLoss, GSPOVariant, sequence_log_ratio
from .lm import IGNORE_INDEX, lm_loss
from .ppo import PPOLoss, gae, ppo_token_rewards, value_loss
from .rm import bradley_terry_loss
from .spo import SPOLoss, SPOTracker, policy_drift, spo_advantages
from .tis import TISLevel, mismatch_stats, tis_weights

__all__ = [
    "AggMode", "KLKind", "AdvScale", "IGNORE_INDEX", "ClipConfig", "KLConfig", "ClippedPolicyLoss", "KLTerm",
    "aggregate", "apply_weights", "entropy_from_logits", "global_counts", "kl_estimate", "logprobs_from_logits",
    "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    "lm_loss", "dpo_loss", "sequence_logprob", "distill_loss", "bradley_terry_loss",
    "group_advantages", "zero_variance_groups", "policy_loss", "kl_reward_penalty",
    "kl_penalized_rewards", "GRPOLoss",
    "gae", "ppo_token_rewards", "value_loss", "PPOLoss",
    "SPOTracker", "SPOLoss", "spo_advantages", "policy_drift",
    "DrGRPOLoss", "DAPOLoss", "overlong_reward", "GSPOLoss", "GSPOVariant", "sequence_log_ratio",
    "CISPOLoss", "population_group_advantages",
    "PolicyLossName", "PolicyLoss", "POLICY_LOSSES", "make_policy_loss", "dynamic_sampling",
    "TISLevel", "tis_weights", "mismatch_stats",
]
