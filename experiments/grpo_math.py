"""GRPO on verifiable math problems, on Ray, with a choice of policy loss.

    python experiments/grpo_math.py                        # CPU, no downloads: bootstraps a small model
    python experiments/grpo_math.py --driver.steps 100 --rollout.sampling.n 8 --rollout-workers 2
    python experiments/grpo_math.py --loss dapo            # or dr_grpo, gspo, cispo (each with its paper's defaults)
    python experiments/grpo_math.py --loss cispo --cispo.ratio-max 3 --cispo.kl.coef 0.05
    python experiments/grpo_math.py --rollout.quantize int8   # int8 rollouts; truncated IS on (--update.tis-cap 2)
    python experiments/grpo_math.py --init runs/sft/final --dataset gsm8k_train.jsonl --test-dataset gsm8k_test.jsonl
    python experiments/grpo_math.py --address auto         # on a cluster started with `ray up cluster.yaml`

With no --init it prepares built-in math data, a tokenizer and a small policy pretrained and SFT'd
through the same learner (cached under <run-dir>/bootstrap), evaluates held-out exact-match accuracy,
runs GRPO, evaluates again and prints a summary table; metrics.jsonl and curves.png are in --run-dir.

--loss NAME trains with that loss's section of flags (--grpo.*, --dr-grpo.*, --dapo.*, --gspo.*,
--cispo.*); --loss dapo also turns on dynamic sampling (--filter-zero-variance). --update.tis-cap C
weights each token's loss by min(pi_learner / pi_rollout, C) against the rollout engine's mismatch,
which is logged every step (mismatch_abs_mean/max). See docs/policy_losses.md.
All flags: python experiments/grpo_math.py --help
"""
from __future__ import annotations

from recipes.rl_config import GRPOMathConfig
from recipes.math_rl import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(GRPOMathConfig, argv)


if __name__ == "__main__":
    main()
