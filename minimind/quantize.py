"""Dynamic int8 copies of a MiniMind policy for CPU generation (rollouts).

Every ``nn.Linear`` of the model (attention q/k/v/o, the SwiGLU projections of dense FFNs and of
MoE experts) and the LM head become :class:`Int8DynamicLinear`: weights quantised to int8 per
output channel (symmetric, scale = max|w|/127), activations quantised per call (per tensor,
affine), int8 × int8 GEMMs with int32 accumulation through fbgemm (``quantized::linear_dynamic``,
the kernel ``torch.ao.quantization.quantize_dynamic`` installs; that wrapper module is deprecated in
torch 2.13, the kernel is not). Embedding, RMSNorms, RoPE, the MoE router and the KV cache stay fp32.

Tied embeddings: the LM head gets its own int8 copy of the embedding matrix; the input embedding
stays the fp32 lookup table (quantising a lookup saves no compute).

Weight sync: an int8 model still takes the float policy's ``state_dict`` through
``load_state_dict`` (strict): each int8 layer re-quantises the incoming float weight, so a rollout
worker's weight sync is unchanged. The int8 model samples from a slightly different policy than
the fp32 learner trains: pair it with the learner's truncated importance sampling
(``learner.losses.tis``). Activations get one scale per call (the whole batch), so an int8 row's
logprobs also depend slightly on the other rows decoded with it: the engine's returned logprobs
are those it sampled from; an int8 recomputation of the same tokens is not.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .model import MiniMindForCausalLM

__all__ = ["Int8DynamicLinear", "quantize_int8", "int8_layers", "cpu_has_vnni"]

#: a tied LM head reads the embedding when a state dict carries only that key
EMBED_KEY = "model.embed_tokens.weight"
HEAD_KEY = "lm_head.weight"


def _tied_head_from_embedding(module, state_dict, prefix, *args) -> None:
    if prefix + HEAD_KEY not in state_dict and prefix + EMBED_KEY in state_dict:
        state_dict[prefix + HEAD_KEY] = state_dict[prefix + EMBED_KEY]


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has AVX512-VNNI or AVX-VNNI (Linux /proc/cpuinfo; False if unknown).
    fbgemm's VNNI kernels accumulate u8·s8 products straight into int32, so full 8-bit activations
    cannot saturate there."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni"})
    except OSError:
        pass
    return False


def _quantize_per_channel(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 quantised tensor of a float [out, in] weight."""
    w = weight.detach().float().cpu().contiguous()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.13 flags the quantised-tensor constructors as deprecated; fbgemm's prepack still
        # takes them and there is no replacement yet for dynamic int8 GEMMs on CPU
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)


class Int8DynamicLinear(nn.Module):
    """y = x·Wᵀ (+ b) with int8 weights (per channel) and dynamically quantised int8 activations.

    Holds no float parameters. ``set_weight`` (and ``load_state_dict`` with a float ``weight`` under
    this module's prefix) quantises and prepacks a new float weight. ``reduce_range`` quantises
    activations to 7 bits, which keeps fbgemm's AVX2 kernels from saturating their 16-bit
    intermediate sums (torch's own default for fbgemm); CPUs with VNNI do not need it and get about
    half the error without it (see :func:`quantize_int8`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, reduce_range: bool = True):
        super().__init__()
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            raise RuntimeError("int8 rollouts need torch's fbgemm quantised engine (x86 CPU builds); "
                               f"this torch has {torch.backends.quantized.supported_engines}")
        self.in_features, self.out_features = in_features, out_features
        self.has_bias = bias
        self.reduce_range = reduce_range
        self._packed = None
        self.register_load_state_dict_pre_hook(Int8DynamicLinear._take_float_weight)

    @classmethod
    def from_linear(cls, linear: nn.Linear, reduce_range: bool = True):
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, reduce_range)
        q.set_weight(linear.weight, linear.bias)
        return q

    def set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"Int8DynamicLinear: weight of shape {tuple(weight.shape)} for a layer "
                             f"[{self.out_features}, {self.in_features}]")
        if self.has_bias != (bias is not None):
            raise ValueError(f"Int8DynamicLinear: layer has_bias={self.has_bias} but bias given={bias is not None}")
        b = None if bias is None else bias.detach().float().cpu().contiguous()
        self._packed = torch.ops.quantized.linear_prepack(_quantize_per_channel(weight), b)

    @staticmethod
    def _take_float_weight(module, state_dict, prefix, local_metadata, strict, missing_keys,
                           unexpected_keys, error_msgs) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        weight = state_dict.pop(key)
        bias = state_dict.pop(prefix + "bias", None)
        try:
            module.set_weight(weight, bias)
        except ValueError as e:
            error_msgs.append(f"{key}: {e}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            raise RuntimeError("Int8DynamicLinear has no weight yet: call set_weight or load_state_dict")
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float().contiguous(), self._packed,
                                               self.reduce_range)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}, "
                f"int8 per-channel weights, dynamic int8 activations, reduce_range={self.reduce_range}")


def quantize_int8(model: MiniMindForCausalLM, reduce_range: bool | None = None) -> MiniMindForCausalLM:
    """An fp32 CPU copy of ``model`` for generation (eval mode, no gradients) with every nn.Linear
    and the LM head as :class:`Int8DynamicLinear`. ``model`` itself is not modified. Load new float
    weights into the copy with ``load_state_dict`` (re-quantised on the way in).
    ``reduce_range`` None: 7-bit activations unless the CPU has VNNI (:func:`cpu_has_vnni`)."""
    if not isinstance(model, MiniMindForCausalLM):
        raise TypeError(f"quantize_int8 takes a MiniMindForCausalLM, got {type(model).__name__}")
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    tied = model.config.tie_word_embeddings
    src_head = model.lm_head
    model.lm_head = nn.Identity()  # keep the (possibly tied) head weight out of the deep copy
    try:
        q = copy.deepcopy(model).float().cpu().eval()
    finally:
        model.lm_head = src_head
    for parent in list(q.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8DynamicLinear.from_linear(child, reduce_range))
    q.lm_head = Int8DynamicLinear.from_linear(src_head, reduce_range)
    if tied:
        q.register_load_state_dict_pre_hook(_tied_head_from_embedding)
    q.requires_grad_(False)
    return q


def int8_layers(model: nn.Module) -> int:
    """How many int8 layers ``model`` holds (0 for a float model)."""
    return sum(isinstance(m, Int8DynamicLinear) for m in model.modules())
