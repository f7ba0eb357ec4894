"""Reward model: a score model (trunk + scalar head) initialised from the SFT trunk, Bradley-Terry loss.

    python experiments/reward_model.py               # from runs/sft/final on the built-in math pairs
    python experiments/reward_model.py --init runs/sft/final --data dpo.jsonl --steps 300

Saves <run-dir>/final (a "score" checkpoint: minimind.checkpoint.load_score_model / reward.RewardActor load
it) and prints the fraction of held-out TEST pairs whose chosen response scores higher.
"""
from __future__ import annotations

from recipes.supervised_config import RewardModelConfig
from recipes.supervised import run_reward_model
from recipes.supervised_common import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(RewardModelConfig, run_reward_model, argv)


if __name__ == "__main__":
    main()
