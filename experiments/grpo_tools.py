"""GRPO with a calculator tool: multi-turn tool-use RL on arithmetic the model cannot do in its head.

    python experiments/grpo_tools.py                       # CPU, no downloads (bootstrap + tool SFT + GRPO)
    python experiments/grpo_tools.py --env.max-turns 3 --env.max-total-tokens 160 --driver.steps 40
    python experiments/grpo_tools.py --reward.extra-turn-penalty 0.05 --reward.tool-format-weight 0.1

Bootstraps the demo policy (cached under <run-dir>/bootstrap), teaches it the tool-call format on
EASY problems (<run-dir>/tool_sft), then runs GRPO on HARD problems (multi-digit products, long sums)
with multi-turn episodes: the model calls the calculator in the chat template's <tool_call> format,
reads the result and answers. Prints held-out HARD accuracy before/after, with and without the tool,
tool calls and turns per episode. All flags: python experiments/grpo_tools.py --help
"""
from __future__ import annotations

from recipes.tools_rl import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(argv)


if __name__ == "__main__":
    main()
