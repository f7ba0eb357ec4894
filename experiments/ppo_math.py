"""PPO on verifiable math problems, on Ray.

    python experiments/ppo_math.py                        # CPU, no downloads: bootstraps a small model
    python experiments/ppo_math.py --driver.steps 100 --rollout.sampling.n 8 --rollout-workers 2
    python experiments/ppo_math.py --init runs/sft/final --dataset gsm8k_train.jsonl --test-dataset gsm8k_test.jsonl
    python experiments/ppo_math.py --address auto         # on a cluster started with `ray up cluster.yaml`

With no --init it prepares built-in math data, a tokenizer and a small policy pretrained and SFT'd
through the same learner (cached under <run-dir>/bootstrap), evaluates held-out exact-match accuracy,
runs PPO, evaluates again and prints a summary table; metrics.jsonl and curves.png are in --run-dir.
All flags: python experiments/ppo_math.py --help
"""
from __future__ import annotations

from recipes.rl_config import PPOMathConfig
from recipes.math_rl import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(PPOMathConfig, argv)


if __name__ == "__main__":
    main()
