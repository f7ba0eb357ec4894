"""SPO on verifiable math problems, on Ray.

    python experiments/spo_math.py                        # CPU, no downloads: bootstraps a small model
    python experiments/spo_math.py --driver.steps 100 --driver.prompts-per-step 128 --rollout-workers 2
    python experiments/spo_math.py --loss cispo            # or gspo: the objective on SPO's advantages
    python experiments/spo_math.py --init runs/sft/final --dataset gsm8k_train.jsonl --test-dataset gsm8k_test.jsonl
    python experiments/spo_math.py --address auto         # on a cluster started with `ray up cluster.yaml`

With no --init it prepares built-in math data, a tokenizer and a small policy pretrained and SFT'd
through the same learner (cached under <run-dir>/bootstrap), evaluates held-out exact-match accuracy,
runs SPO, evaluates again and prints a summary table; metrics.jsonl and curves.png are in --run-dir.
--loss spo|cispo|gspo picks the policy objective (docs/policy_losses.md says why not dr_grpo or dapo).
All flags: python experiments/spo_math.py --help
"""
from __future__ import annotations

from recipes.rl_config import SPOMathConfig
from recipes.math_rl import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(SPOMathConfig, argv)


if __name__ == "__main__":
    main()
