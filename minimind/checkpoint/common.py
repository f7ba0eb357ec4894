"""What every checkpoint format shares: the error type, file names, strict state-dict loading."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..config import MiniMindConfig
from ..lora import has_lora
from ..model import MiniMindForCausalLM, MiniMindScoreModel

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TIED_KEY, EMBED_KEY = "lm_head.weight", "model.embed_tokens.weight"
# derived (non-parameter) tensors some MiniMind versions stored; recomputed from the config here
DERIVED_KEYS = re.compile(r"^(model\.)?(freqs_cos|freqs_sin|rope_cos|rope_sin|pos_cis)$|\.rotary_emb\.inv_freq$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names file and tensor."""


def model_kind(model: nn.Module) -> str:
    if isinstance(model, MiniMindScoreModel):
        return "score"
    if isinstance(model, MiniMindForCausalLM):
        return "causal_lm"
    raise TypeError(f"expected MiniMindForCausalLM or MiniMindScoreModel, got {type(model).__name__}")


def is_tied(model: nn.Module) -> bool:
    return (isinstance(model, MiniMindForCausalLM)
            and model.lm_head.weight is model.model.embed_tokens.weight)


def plain_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """State dict with every tensor once (tied lm_head dropped), contiguous, on CPU."""
    if has_lora(model):
        raise ValueError("model has LoRA adapters: merge_lora(model) first, or save them with save_lora")
    sd = model.state_dict()
    if is_tied(model):
        sd.pop(TIED_KEY, None)
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.cpu().contiguous()
    return out


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError, ...: truncated, corrupt, not safetensors
        raise CheckpointError(f"{path}: cannot read safetensors file (corrupt or truncated?): {e}") from e


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP ('module.') and torch.compile ('_orig_mod.') prefixes."""
    out = {}
    for k, v in sd.items():
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def check_tensors(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], source: str | Path,
                  tied: bool, expected_from: str = "") -> None:
    """Names and shapes of a checkpoint's tensors (`found`) against the model's (`expected`): a missing,
    unexpected or wrongly shaped tensor raises CheckpointError naming `source` and the tensor (`expected_from`
    says where the expected shapes come from, e.g. the config.json). A tied model (`tied`) accepts
    `lm_head.weight` absent (our format) or present with the embedding's shape (MiniMind .pth)."""
    found, expected = dict(found), dict(expected)
    where = f" ({expected_from})" if expected_from else ""
    if tied:
        expected.pop(TIED_KEY, None)
        got = found.pop(TIED_KEY, None)
        if got is not None and EMBED_KEY in expected and tuple(got) != tuple(expected[EMBED_KEY]):
            raise CheckpointError(f"{source}: tensor '{TIED_KEY}' has shape {tuple(got)}, expected "
                                  f"{tuple(expected[EMBED_KEY])}{where}")
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                              f"({len(missing)} missing){where}")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor(s) {unexpected[:8]}"
                              f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} not in the model){where}")
    for k, want in expected.items():
        if tuple(found[k]) != tuple(want):
            raise CheckpointError(f"{source}: tensor '{k}' has shape {tuple(found[k])}, expected {tuple(want)}{where}")


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str | Path,
                 drop_derived: bool = False) -> None:
    """Copy `sd` into `model`, refusing missing / unexpected / wrongly shaped tensors (`check_tensors`);
    a tied `lm_head.weight`, when present, must also equal the embedding (it is the same tensor)."""
    sd = dict(sd)
    if drop_derived:
        sd = {k: v for k, v in sd.items() if not DERIVED_KEYS.search(k)}
    expected = model.state_dict()
    tied = is_tied(model)
    check_tensors({k: tuple(v.shape) for k, v in sd.items()}, {k: tuple(v.shape) for k, v in expected.items()},
                  source, tied)
    if tied and TIED_KEY in sd:
        if EMBED_KEY in sd and not torch.equal(sd[TIED_KEY], sd[EMBED_KEY]):
            raise CheckpointError(f"{source}: tensor '{TIED_KEY}' differs from '{EMBED_KEY}' but the config "
                                  "ties them (tie_word_embeddings=True); use a config with untied embeddings")
        sd.pop(TIED_KEY)
    if tied:
        expected.pop(TIED_KEY, None)
    with torch.no_grad():
        for k, want in expected.items():
            want.copy_(sd[k])


def file_dtype(sd: dict[str, torch.Tensor]) -> torch.dtype:
    for k in (EMBED_KEY, *sd):
        if k in sd and sd[k].is_floating_point():
            return sd[k].dtype
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build(cls, cfg: MiniMindConfig, dtype: torch.dtype):
    model = cls(cfg)
    return model.to(dtype) if dtype != torch.float32 else model


