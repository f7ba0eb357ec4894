"""The loss lab: every policy loss (GRPO, Dr.GRPO, DAPO, GSPO, CISPO, PPO's policy part, SPO) on ONE
frozen batch, from identical weights, side by side; and the rollout/learner logprob mismatch on it.

    python experiments/loss_lab.py                          # a fresh batch from the grpo_math bootstrap (or a
                                                            #   small policy built here), a few minutes on CPU
    python experiments/loss_lab.py --updates 8 --optim.lr 3e-4 --probe-size 128
    python experiments/loss_lab.py --gspo.clip.eps-high 1e-3 --cispo.ratio-max 2   # any loss's settings
    python experiments/loss_lab.py --rollout.quantize int8  # sample the batch with the int8 engine
    python experiments/grpo_math.py --record-batches runs/grpo_math/record   # record a real run's batches ...
    python experiments/loss_lab.py --record runs/grpo_math/record --step 20  # ... and take its step 20

Per loss: its value, the gradient's norm and cosine with every other loss's, the share of tokens clipped
(low/high/dual) over k updates, the per-token weights d loss / d logp (where the update goes), KL to the
reference, and greedy held-out accuracy after k updates. A recorded step is also replayed by the run's
own stage (its loss equals the run's). Writes loss_lab.json/png and mismatch.json/png into --out-dir
(default runs/loss_lab). See docs/loss_lab.md. All flags: python experiments/loss_lab.py --help
"""
from __future__ import annotations

from recipes.lab.run import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(argv)


if __name__ == "__main__":
    main()
