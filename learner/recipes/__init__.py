"""Supervised recipes (pretrain, SFT, LoRA, DPO, distillation, reward model): typed configs
(config.py), the shared prepare/fit/save path (common.py), held-out evaluation (evaluate.py) and one
`run_<stage>` per stage (supervised.py)."""
from .common import Run, cli_main, fit, prepare, resolve_device, save_final
from .config import (DistillConfig, DPOConfig, EvalConfig, LoRARecipeConfig, PretrainConfig, RecipeConfig,
                     RewardModelConfig, SFTConfig)
from .evaluate import evaluate_math, heldout_problems, pair_accuracy
from .supervised import run_distill, run_dpo, run_lora, run_pretrain, run_reward_model, run_sft

__all__ = ["RecipeConfig", "EvalConfig", "PretrainConfig", "SFTConfig", "LoRARecipeConfig", "DPOConfig",
           "DistillConfig", "RewardModelConfig", "Run", "prepare", "fit", "save_final", "cli_main",
           "resolve_device", "evaluate_math", "heldout_problems", "pair_accuracy", "run_pretrain", "run_sft",
           "run_lora", "run_dpo", "run_distill", "run_reward_model"]
