"""Generation engines a rollout worker can drive, chosen by a typed name and built lazily: the vLLM
backend is an optional dependency, imported only when asked for (no import-time registration).

Every engine: `load_weights(state_dict)`, `generate(token_lists, SamplingParams, pad_id)` ->
`minimind.generate.GenerationOutput` (left-padded prompts, right-padded responses with the stop token
in the mask, logprobs of the distribution actually sampled from), and a `name`.
"""
from __future__ import annotations

import importlib
from typing import Any, Literal

import torch

from minimind.config import MiniMindConfig
from minimind.generate import GenerationOutput, SamplingParams, generate
from minimind.model import MiniMindForCausalLM

EngineName = Literal["native", "vllm"]


class NativeEngine:
    """minimind.generate on a MiniMindForCausalLM held by the worker (bf16 on CUDA, fp32 on CPU)."""

    name = "native"

    def __init__(self, model_cfg: MiniMindConfig, device: str):
        self.device = torch.device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = MiniMindForCausalLM(model_cfg).to(self.device, dtype).eval()

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)

    def generate(self, token_lists: list[list[int]], params: SamplingParams, pad_id: int) -> GenerationOutput:
        return generate(self.model, token_lists, params, pad_id=pad_id)


ENGINE_CLASSES: dict[str, tuple[str, str]] = {
    "native": ("rollout.engines", "NativeEngine"),
    "vllm": ("rollout.vllm_engine", "VLLMEngine"),
}
"""name -> (module, class): the module is imported when that engine is built."""


def make_engine(name: EngineName, model_cfg: MiniMindConfig, device: str) -> Any:
    """Build engine `name` for a model of `model_cfg` on `device`."""
    if name not in ENGINE_CLASSES:
        raise ValueError(f"unknown rollout engine {name!r}: choose one of {sorted(ENGINE_CLASSES)}")
    module, cls = ENGINE_CLASSES[name]
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise RuntimeError(f"--rollout.engine {name} needs an optional dependency that is not installed "
                           f"({e}); see README 'vLLM rollouts'") from e
    return factory(model_cfg, device)
