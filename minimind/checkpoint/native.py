"""Our checkpoint folders: `<dir>/model.safetensors` + `<dir>/config.json`.

    model.safetensors   every tensor once (a tied lm_head is not stored: it IS embed_tokens)
    config.json         MiniMindConfig.to_dict() + "model_kind" ("causal_lm" | "score")
                        + "torch_dtype" + optional "extra_meta" (any JSON the caller passed)

Loading is strict: a missing, unexpected or wrongly shaped tensor raises `CheckpointError` naming the
file and the tensor (with expected and found shapes); an unreadable file or missing path names the path.
`check_checkpoint` finds the same problems from config.json and the safetensors header alone (no tensor
is read), so a run refuses a bad checkpoint before it starts the processes that would load it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, MiniMindConfig
from ..model import MiniMindForCausalLM, MiniMindScoreModel
from .common import (CONFIG_FILE, MODEL_FILE, CheckpointError, build, check_tensors, dtype_name, file_dtype,
                     is_tied, load_strict, model_kind, plain_state_dict, read_safetensors)
from .header import read_header
from .minimind_pth import PTH_SUFFIXES, load_minimind_pth


def save_model(model: nn.Module, dir: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write `<dir>/model.safetensors` + `<dir>/config.json` (see module doc). Returns dir."""
    from safetensors.torch import save_file

    kind = model_kind(model)
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    sd = plain_state_dict(model)
    cfg = model.config.to_dict()
    cfg["model_kind"] = kind
    cfg["torch_dtype"] = dtype_name(file_dtype(sd))
    if extra_meta:
        cfg["extra_meta"] = extra_meta
    tmp = dir / (MODEL_FILE + ".tmp")
    save_file(sd, str(tmp), metadata={"format": "pt", "model_kind": kind})
    tmp.replace(dir / MODEL_FILE)  # atomic: a crash never leaves a half-written model.safetensors
    (dir / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    return dir


def _resolve(dir_or_file: str | Path) -> tuple[Path, Path]:
    p = Path(dir_or_file)
    if not p.exists():
        raise CheckpointError(f"checkpoint path not found: {p}")
    if p.is_dir():
        weights, cfg = p / MODEL_FILE, p / CONFIG_FILE
    else:
        weights, cfg = p, p.parent / CONFIG_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint file not found: {weights}")
    if not cfg.is_file():
        raise CheckpointError(f"checkpoint config not found: {cfg}")
    return weights, cfg


def read_checkpoint_config(dir_or_file: str | Path) -> tuple[MiniMindConfig, dict[str, Any]]:
    """(MiniMindConfig, raw config.json dict incl. model_kind / extra_meta) of a saved checkpoint."""
    _, cfg_path = _resolve(dir_or_file)
    try:
        raw = json.loads(cfg_path.read_text())
        return MiniMindConfig.from_dict(raw), raw
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: invalid config: {e}") from e


KINDS = {"causal_lm": (MiniMindForCausalLM, "load_model"), "score": (MiniMindScoreModel, "load_score_model")}


def check_checkpoint(dir_or_file: str | Path, kind: str = "causal_lm", **pth_options: Any) -> MiniMindConfig:
    """What `load_model` (kind "causal_lm") or `load_score_model` ("score") would refuse, found without
    reading a tensor: a missing file, a config.json that is not valid, another model kind, a weights file
    that is truncated or not safetensors, tensors missing, unexpected or shaped otherwise than the
    config's model. Returns the checkpoint's config. A MiniMind .pth has no header: it is loaded whole
    (its config is inferred from its tensors)."""
    p = Path(dir_or_file)
    if p.is_file() and p.suffix in PTH_SUFFIXES:
        return _load_kind(kind, p, "cpu", None, **pth_options).config
    if pth_options:
        raise CheckpointError(f"{p}: {sorted(pth_options)} only apply to MiniMind .pth files; a saved "
                              "checkpoint folder carries its own config.json")
    weights, cfg_path = _resolve(p)
    cfg, raw = read_checkpoint_config(p)
    found = raw.get("model_kind", "causal_lm")
    if found != kind:
        use = KINDS.get(found, KINDS["causal_lm"])[1]
        raise CheckpointError(f"{weights}: checkpoint holds a {found!r} model, not {kind!r}; use {use}")
    with torch.device("meta"):   # shapes only: no memory, no init
        model = KINDS[kind][0](cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_tensors(read_header(weights), expected, weights, is_tied(model),
                  expected_from=f"shapes of the model {cfg_path} describes")
    return cfg


def _load_kind(kind: str, dir_or_file, device, dtype, **pth_options):
    p = Path(dir_or_file)
    if p.is_file() and p.suffix in PTH_SUFFIXES:
        if kind != "causal_lm":
            raise CheckpointError(f"{p}: .pth files hold causal LMs; use load_model")
        return load_minimind_pth(p, device=device, dtype=dtype, **pth_options)
    cfg = check_checkpoint(p, kind, **pth_options)
    weights, _ = _resolve(p)
    sd = read_safetensors(weights)
    dtype = dtype or file_dtype(sd)
    model = build(KINDS[kind][0], cfg, dtype)
    load_strict(model, sd, weights)
    return model.to(device).eval()


def load_model(dir_or_file: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, **pth_options: Any) -> MiniMindForCausalLM:
    """Load a causal LM saved by `save_model` (a folder, or its model.safetensors file).

    A `.pth`/`.pt` path is read as a MiniMind native state dict (see `load_minimind_pth`), using a
    config.json next to it when there is one; `pth_options` go to `load_minimind_pth` (config_json,
    num_attention_heads, or any MiniMindConfig field that shapes cannot tell, e.g. rms_norm_eps).
    dtype None = the dtype stored in the file. Returned in eval mode."""
    return _load_kind("causal_lm", dir_or_file, device, dtype, **pth_options)


def load_score_model(dir_or_file: str | Path, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None) -> MiniMindScoreModel:
    """Load a MiniMindScoreModel (critic / reward model) saved by `save_model`. Eval mode."""
    return _load_kind("score", dir_or_file, device, dtype)


