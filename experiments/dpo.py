"""DPO on preference pairs against a frozen copy of the starting model.

    python experiments/dpo.py                        # runs/sft/final on the built-in math pairs, CPU demo
    python experiments/dpo.py --beta 0.1 --optim.lr 5e-5 --steps 200 --data dpo.jsonl

Pairs are {"chosen": [msgs], "rejected": [msgs]}; the built-in ones reject a solution whose last step is off
by 1-3. Logs reward_accuracy / reward_margin, saves <run-dir>/final, prints held-out accuracy.
"""
from __future__ import annotations

from recipes.supervised_config import DPOConfig
from recipes.supervised import run_dpo
from recipes.supervised_common import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(DPOConfig, run_dpo, argv)


if __name__ == "__main__":
    main()
