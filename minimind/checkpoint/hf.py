"""Hugging Face export / import: the folder transformers and vLLM load with our logits.

Dense MiniMind without qk-norm is exactly `LlamaForCausalLM`, with qk-norm exactly `Qwen3ForCausalLM`
(same parameter names, RMSNorm, rotate-half RoPE, YaRN). MoE models map to the transformers MoE
architectures in `hf_moe.py`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, MiniMindConfig
from ..model import MiniMindForCausalLM, rope_inv_freq
from .hf_moe import moe_architecture, moe_config_fields, moe_state_dict
from .common import (CONFIG_FILE, DERIVED_KEYS, MODEL_FILE, TIED_KEY, CheckpointError, build, dtype_name,
                     file_dtype, load_strict, plain_state_dict, read_safetensors)


def _hf_rope(cfg: MiniMindConfig) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(legacy rope_scaling or None, transformers-5 rope_parameters)."""
    if cfg.rope_scaling is None:
        return None, {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    rs = cfg.rope_scaling
    _, attn = rope_inv_freq(cfg)  # the effective attention factor our model uses
    scaling = {"rope_type": "yarn", "factor": float(rs["factor"]),
               "original_max_position_embeddings": int(rs.get("original_max_position_embeddings",
                                                              cfg.max_position_embeddings)),
               "beta_fast": float(rs.get("beta_fast", 32)), "beta_slow": float(rs.get("beta_slow", 1)),
               "attention_factor": float(attn)}
    return scaling, {**scaling, "rope_theta": float(cfg.rope_theta)}


def hf_config_dict(cfg: MiniMindConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The transformers config.json for a MiniMindConfig: Llama, Qwen3 (qk-norm), or for MoE the
    architecture of `hf_moe.moe_architecture` (raises NotImplementedError when there is none)."""
    if cfg.use_moe:
        arch, model_type = moe_architecture(cfg)
    else:
        arch, model_type = ("Qwen3ForCausalLM", "qwen3") if cfg.qk_norm else ("LlamaForCausalLM", "llama")
    rope_scaling, rope_parameters = _hf_rope(cfg)
    d: dict[str, Any] = {
        "architectures": [arch], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
        # both spellings: transformers >= 5 reads rope_parameters, 4.x and vLLM read rope_theta/rope_scaling
        "rope_theta": float(cfg.rope_theta), "rope_scaling": rope_scaling, "rope_parameters": rope_parameters,
        "attention_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_word_embeddings, "initializer_range": cfg.initializer_range,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "use_cache": True, "torch_dtype": dtype_name(dtype), "dtype": dtype_name(dtype),
    }
    if cfg.qk_norm or cfg.use_moe:
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_hidden_layers)
    else:
        d.update(mlp_bias=False, pretraining_tp=1)
    if cfg.use_moe:
        d.update(moe_config_fields(cfg))
    return d


def export_hf(model: MiniMindForCausalLM, dir: str | Path, dtype: torch.dtype = torch.float32,
              tokenizer_dir: str | Path | None = None) -> Path:
    """Write a folder `transformers.AutoModelForCausalLM.from_pretrained(dir)` (and vLLM) loads as
    LlamaForCausalLM (no qk-norm), Qwen3ForCausalLM (qk-norm), Qwen3MoeForCausalLM / Qwen2MoeForCausalLM
    (MoE, see hf_moe) with our logits: config.json, generation_config.json, model.safetensors (+ the
    files of `tokenizer_dir`). LoRA models must be merged first."""
    from safetensors.torch import save_file

    if not isinstance(model, MiniMindForCausalLM):
        raise TypeError(f"export_hf needs a MiniMindForCausalLM, got {type(model).__name__}")
    cfg = model.config
    hf_cfg = hf_config_dict(cfg, dtype)  # raises for an MoE without equivalent before anything is written
    sd = plain_state_dict(model, dtype)
    if cfg.use_moe:
        sd = moe_state_dict(cfg, sd)
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        tok = Path(tokenizer_dir)
        if not tok.is_dir():
            raise CheckpointError(f"tokenizer folder not found: {tok}")
        for f in tok.iterdir():
            if f.is_file() and f.name not in (CONFIG_FILE, MODEL_FILE, "generation_config.json"):
                shutil.copy2(f, dir / f.name)
    save_file(sd, str(dir / MODEL_FILE), metadata={"format": "pt"})
    (dir / CONFIG_FILE).write_text(json.dumps(hf_cfg, indent=2))
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
           "pad_token_id": cfg.pad_token_id, "do_sample": True, "temperature": 1.0, "top_p": 1.0}
    (dir / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return dir


def _first_id(v: Any, default: int) -> int:
    if isinstance(v, list):
        v = v[0] if v else None
    return default if v is None else int(v)


def config_from_hf(raw: dict[str, Any], source: str | Path = "config.json") -> MiniMindConfig:
    """MiniMindConfig from a Llama / Qwen3 / Qwen3-MoE transformers config dict (refuses features we lack)."""
    mt = raw.get("model_type")
    if mt not in ("llama", "qwen3", "qwen3_moe"):
        raise CheckpointError(f"{source}: model_type {mt!r} is not supported (llama, qwen3 or qwen3_moe)")
    moe: dict[str, Any] = {}
    if mt == "qwen3_moe":
        if raw.get("mlp_only_layers") or raw.get("decoder_sparse_step", 1) != 1:
            raise CheckpointError(f"{source}: dense layers between MoE layers (mlp_only_layers / "
                                  "decoder_sparse_step) are not supported by MiniMind")
        moe = dict(use_moe=True, n_routed_experts=raw["num_experts"], n_shared_experts=0,
                   num_experts_per_tok=raw["num_experts_per_tok"], norm_topk_prob=bool(raw.get("norm_topk_prob")),
                   aux_loss_alpha=raw.get("router_aux_loss_coef", 0.001), seq_aux=False)
        raw = {**raw, "intermediate_size": raw["moe_intermediate_size"]}
    for flag in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if raw.get(flag):
            raise CheckpointError(f"{source}: {flag}=true is not supported by MiniMind")
    if raw.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act={raw['hidden_act']!r} is not supported (silu only)")
    rp = raw.get("rope_parameters") or {}
    theta = rp.get("rope_theta", raw.get("rope_theta", 10000.0))
    scaling = raw.get("rope_scaling") or (rp if rp.get("rope_type", "default") != "default" else None)
    rope_scaling = None
    if scaling:
        rtype = scaling.get("rope_type", scaling.get("type"))
        if rtype != "yarn":
            raise CheckpointError(f"{source}: rope type {rtype!r} is not supported (yarn only)")
        rope_scaling = {"type": "yarn", "factor": scaling["factor"],
                        "original_max_position_embeddings": scaling.get("original_max_position_embeddings",
                                                                        raw.get("max_position_embeddings")),
                        "beta_fast": scaling.get("beta_fast", 32), "beta_slow": scaling.get("beta_slow", 1),
                        "attention_factor": scaling.get("attention_factor")}
    heads = raw["num_attention_heads"]
    d = MiniMindConfig()
    try:
        return MiniMindConfig(
            vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads, intermediate_size=raw["intermediate_size"],
            max_position_embeddings=raw.get("max_position_embeddings", d.max_position_embeddings),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_scaling=rope_scaling,
            qk_norm=mt in ("qwen3", "qwen3_moe"), tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=_first_id(raw.get("bos_token_id"), d.bos_token_id),
            eos_token_id=_first_id(raw.get("eos_token_id"), d.eos_token_id),
            pad_token_id=_first_id(raw.get("pad_token_id"), d.pad_token_id),
            initializer_range=raw.get("initializer_range", d.initializer_range), **moe)
    except (KeyError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: cannot map to MiniMindConfig: {e}") from e


def import_hf(dir: str | Path, device: str | torch.device = "cpu",
              dtype: torch.dtype | None = None) -> MiniMindForCausalLM:
    """Load a Hugging Face Llama / Qwen3 / Qwen3-MoE folder (config.json + model.safetensors, or a sharded
    model.safetensors.index.json) as MiniMindForCausalLM. Strict like load_model; eval mode."""
    dir = Path(dir)
    cfg_path = dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"Hugging Face config not found: {cfg_path}")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    cfg = config_from_hf(raw, cfg_path)
    index = dir / "model.safetensors.index.json"
    if (dir / MODEL_FILE).is_file():
        source: Path = dir / MODEL_FILE
        sd = read_safetensors(source)
    elif index.is_file():
        source = index
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd = {}
        for s in shards:
            sd.update(read_safetensors(dir / s))
    else:
        raise CheckpointError(f"no {MODEL_FILE} or model.safetensors.index.json in {dir}")
    sd = {k: v for k, v in sd.items() if not DERIVED_KEYS.search(k)}
    if not cfg.tie_word_embeddings and TIED_KEY not in sd:
        raise CheckpointError(f"{source}: missing tensor(s) ['{TIED_KEY}'] (tie_word_embeddings is false)")
    dtype = dtype or file_dtype(sd)
    model = build(MiniMindForCausalLM, cfg, dtype)
    load_strict(model, sd, source)
    return model.to(device).eval()
