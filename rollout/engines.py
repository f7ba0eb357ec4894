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
QuantizeName = Literal["none", "int8"]


class NativeEngine:
    """minimind.generate on a MiniMindForCausalLM held by the worker (bf16 on CUDA, fp32 on CPU).
    `quantize="int8"` (CPU only): the worker's copy is minimind.quantize's dynamic int8 model, built
    once here; each weight sync loads the learner's float state dict into it, re-quantising every
    linear layer (the learner stays fp32)."""

    name = "native"

    def __init__(self, model_cfg: MiniMindConfig, device: str, quantize: QuantizeName = "none"):
        self.device = torch.device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        model = MiniMindForCausalLM(model_cfg).to(self.device, dtype).eval()
        if quantize == "int8":
            if self.device.type != "cpu":
                raise ValueError(f"--rollout.quantize int8 is the CPU path (fbgemm int8 GEMMs) but the rollout runs "
                                 f"on {device}: use --rollout.quantize none there (or --device cpu)")
            from minimind.quantize import quantize_int8
            model = quantize_int8(model)
            self.name = "native-int8"
        elif quantize != "none":
            raise ValueError(f"--rollout.quantize {quantize!r}: choose none or int8")
        self.model = model

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)  # an int8 copy re-quantises the float weights here

    def generate(self, token_lists: list[list[int]], params: SamplingParams, pad_id: int) -> GenerationOutput:
        return generate(self.model, token_lists, params, pad_id=pad_id)


ENGINE_CLASSES: dict[str, tuple[str, str]] = {
    "native": ("rollout.engines", "NativeEngine"),
    "vllm": ("rollout.vllm_engine", "VLLMEngine"),
}
"""name -> (module, class): the module is imported when that engine is built."""


def make_engine(name: EngineName, model_cfg: MiniMindConfig, device: str, quantize: QuantizeName = "none") -> Any:
    """Build engine `name` for a model of `model_cfg` on `device` (`quantize`: its copy's weights)."""
    if name not in ENGINE_CLASSES:
        raise ValueError(f"unknown rollout engine {name!r}: choose one of {sorted(ENGINE_CLASSES)}")
    module, cls = ENGINE_CLASSES[name]
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise RuntimeError(f"--rollout.engine {name} needs an optional dependency that is not installed "
                           f"({e}); see README 'vLLM rollouts'") from e
    return factory(model_cfg, device, quantize=quantize)
