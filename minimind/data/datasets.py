"""Every dataset and batching helper under its historical import path (`minimind.data.datasets`).

They live by idea in: cache.py (Arrow cache), supervised.py (pretrain / SFT / DPO), rl_prompts.py
(RL prompts) and collate.py (padding, BatchIterator).
"""
from minimind.data.cache import (CACHE_VERSION, IGNORE_INDEX, PAD_ID, CachedTable, cache_key, default_cache_dir,
                                 load_or_build)
from minimind.data.collate import BatchIterator, collate_dpo, collate_lm
from minimind.data.rl_prompts import RLPrompt, RLPromptDataset, prompt_key
from minimind.data.supervised import DPODataset, PretrainDataset, SFTDataset, dpo_side, sft_example

__all__ = ["CACHE_VERSION", "IGNORE_INDEX", "PAD_ID", "CachedTable", "cache_key", "default_cache_dir",
           "load_or_build", "BatchIterator", "collate_dpo", "collate_lm", "RLPrompt", "RLPromptDataset",
           "prompt_key", "DPODataset", "PretrainDataset", "SFTDataset", "dpo_side", "sft_example"]
