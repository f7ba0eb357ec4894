"""Knowledge distillation: a smaller student learns from a teacher on the SFT chats.

    python experiments/distill.py                    # teacher runs/sft/final -> student "tiny", CPU demo
    python experiments/distill.py --teacher runs/sft/final --preset tiny --alpha 0.5 --temperature 2

Loss = alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T). The student shares the teacher
tokenizer; saves <run-dir>/final and prints the student held-out accuracy.
"""
from __future__ import annotations

from recipes.supervised_config import DistillConfig
from recipes.supervised import run_distill
from recipes.supervised_common import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(DistillConfig, run_distill, argv)


if __name__ == "__main__":
    main()
