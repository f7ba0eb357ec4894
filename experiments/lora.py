"""LoRA fine-tuning: only low-rank adapters train; the base weights stay frozen.

    python experiments/lora.py                       # adapters on runs/sft/final, CPU demo
    python experiments/lora.py --init runs/pretrain/final --rank 16 --alpha 32 --steps 300

Writes <run-dir>/final/adapter.safetensors (the adapters alone, minimind.lora.load_lora reads it) and the
merged model (model.safetensors + config.json + tokenizer) in the same folder, then prints held-out accuracy.
"""
from __future__ import annotations

from recipes.supervised_config import LoRARecipeConfig
from recipes.supervised import run_lora
from recipes.supervised_common import cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(LoRARecipeConfig, run_lora, argv)


if __name__ == "__main__":
    main()
