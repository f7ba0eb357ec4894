"""DPO on preference pairs against a frozen copy of the starting model.

    python experiments/dpo.py                        # runs/sft/final on the built-in math pairs, CPU demo
    python experiments/dpo.py --beta 0.1 --optim.lr 5e-5 --steps 200 --data dpo.jsonl

Pairs are {"chosen": [msgs], "rejected": [msgs]}; the built-in ones reject a solution whose last step is off
by 1-3. Logs reward_accuracy / reward_margin, saves <run-dir>/final, prints held-out accuracy.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from learner.recipes import DPOConfig, run_dpo, cli_main  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    return cli_main(DPOConfig, run_dpo, argv)


if __name__ == "__main__":
    main()
