"""MiniMind data: readers for the jsonl/parquet formats, cached tokenised datasets,
resumable batching and built-in synthetic math corpora."""
from minimind.data.datasets import (
    IGNORE_INDEX,
    BatchIterator,
    DPODataset,
    PretrainDataset,
    RLPrompt,
    RLPromptDataset,
    SFTDataset,
    collate_dpo,
    collate_lm,
)
from minimind.data.readers import (
    DataError,
    DPOPair,
    MathRecord,
    ReadReport,
    ReadResult,
    gsm8k_final_answer,
    read_conversations,
    read_dpo,
    read_math,
    read_pretrain,
)
from minimind.data.synthetic_math import MathProblem, generate_problems

__all__ = [
    "MathProblem", "generate_problems",
    "IGNORE_INDEX", "BatchIterator", "DPODataset", "PretrainDataset", "RLPrompt",
    "RLPromptDataset", "SFTDataset", "collate_dpo", "collate_lm",
    "DataError", "DPOPair", "MathRecord", "ReadReport", "ReadResult", "gsm8k_final_answer",
    "read_conversations", "read_dpo", "read_math", "read_pretrain",
]
