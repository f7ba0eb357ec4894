"""Pretrain a small MiniMind from scratch on packed text.

    python experiments/pretrain.py                      # CPU demo: synthetic math, "demo" preset, a few minutes
    python experiments/pretrain.py --steps 20 --preset tiny --run-dir /tmp/pt   # smoke test
    python experiments/pretrain.py --data pretrain_hq.jsonl --tokenizer tok/ --preset minimind2-small \\
        --steps 20000 --batch-size 64 --seq-len 512 --checkpoint-every 1000 --device cuda
    python experiments/pretrain.py --resume             # continue runs/pretrain/checkpoint exactly

With no --data it writes the built-in synthetic math corpus to <run-dir>/data and, with no --tokenizer,
trains a small digit-splitting BPE into <run-dir>/tokenizer. Output: <run-dir>/metrics.jsonl, curves.png,
checkpoint/, final/ (model + tokenizer; the input of experiments/sft.py). `--help` lists every option.
"""
from __future__ import annotations

from recipes.supervised_config import PretrainConfig
from recipes.supervised import run_pretrain
from recipes.supervised_common import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(PretrainConfig, run_pretrain, argv)


if __name__ == "__main__":
    main()
