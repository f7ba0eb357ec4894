"""Stages: what the one Learner trains. Supervised (lm, dpo, distill, reward_model) and RL (grpo, ppo,
spo); each plans a batch's optimizer updates and computes a micro-batch's loss."""
from .grpo import GRPOStage, ZeroVarianceFilter
from .logprobs import logprobs_and_entropy, response_logits, response_logprobs
from .ppo import PPOStage
from .rl_common import RLStage, RLUpdateConfig
from .spo import SPOStage
from .supervised import DistillStage, DPOStage, LMStage, RewardModelStage, StageBase, sequence_logprobs

__all__ = ["StageBase", "LMStage", "DPOStage", "DistillStage", "RewardModelStage", "sequence_logprobs",
           "RLStage", "RLUpdateConfig", "GRPOStage", "ZeroVarianceFilter", "PPOStage", "SPOStage",
           "response_logits", "response_logprobs", "logprobs_and_entropy"]
