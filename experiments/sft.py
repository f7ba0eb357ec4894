"""Supervised fine-tuning (loss on assistant tokens only), then held-out math accuracy.

    python experiments/pretrain.py && python experiments/sft.py     # CPU demo, a few minutes each
    python experiments/sft.py --init runs/pretrain/final --steps 400 --optim.lr 1e-3
    python experiments/sft.py --init full_sft_512.pth --tokenizer minimind_tokenizer/ --data sft_mini_512.jsonl

Starts from --init (default runs/pretrain/final; a MiniMind .pth is accepted too), trains on the built-in
synthetic SFT chats unless --data is given, saves <run-dir>/final, then answers --eval-n problems of the
built-in TEST split greedily and prints the exact-match accuracy (also in <run-dir>/eval.json).
"""
from __future__ import annotations

from recipes.supervised_config import SFTConfig
from recipes.supervised import run_sft
from recipes.supervised_common import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(SFTConfig, run_sft, argv)


if __name__ == "__main__":
    main()
