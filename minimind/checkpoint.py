"""Checkpoints: our safetensors folders, MiniMind native `.pth` import, Hugging Face export/import.

Our folder format (`save_model` / `load_model` / `load_score_model`):
    <dir>/model.safetensors   every tensor once (a tied lm_head is not stored: it IS embed_tokens)
    <dir>/config.json         MiniMindConfig.to_dict() + "model_kind" ("causal_lm" | "score")
                              + "torch_dtype" + optional "extra_meta" (any JSON the caller passed)

Loading is strict: a missing, unexpected or wrongly shaped tensor raises `CheckpointError` naming the
file and the tensor (with expected and found shapes); an unreadable file or missing path names the
path. `.pth` files are read with `torch.load(weights_only=True)`: pickles that would run code are
refused.

Hugging Face (`export_hf` / `import_hf`): dense MiniMind without qk-norm is exactly `LlamaForCausalLM`,
with qk-norm it is exactly `Qwen3ForCausalLM` (same parameter names, RMSNorm, rotate-half RoPE,
YaRN). MoE MiniMind has no Llama/Qwen3 equivalent and is refused.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError, MiniMindConfig
from .lora import has_lora
from .model import MiniMindForCausalLM, MiniMindScoreModel, rope_inv_freq

__all__ = ["CheckpointError", "save_model", "load_model", "load_score_model", "read_checkpoint_config",
           "load_minimind_pth", "infer_config_from_state_dict", "export_hf", "import_hf",
           "MODEL_FILE", "CONFIG_FILE"]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TIED_KEY, EMBED_KEY = "lm_head.weight", "model.embed_tokens.weight"
# derived (non-parameter) tensors some MiniMind versions stored; recomputed from the config here
_DERIVED_KEYS = re.compile(r"^(model\.)?(freqs_cos|freqs_sin|rope_cos|rope_sin|pos_cis)$|\.rotary_emb\.inv_freq$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names file and tensor."""


# ----------------------------------------------------------------------------- helpers
def _model_kind(model: nn.Module) -> str:
    if isinstance(model, MiniMindScoreModel):
        return "score"
    if isinstance(model, MiniMindForCausalLM):
        return "causal_lm"
    raise TypeError(f"expected MiniMindForCausalLM or MiniMindScoreModel, got {type(model).__name__}")


def _is_tied(model: nn.Module) -> bool:
    return (isinstance(model, MiniMindForCausalLM)
            and model.lm_head.weight is model.model.embed_tokens.weight)


def _plain_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """State dict with every tensor once (tied lm_head dropped), contiguous, on CPU."""
    if has_lora(model):
        raise ValueError("model has LoRA adapters: merge_lora(model) first, or save them with save_lora")
    sd = model.state_dict()
    if _is_tied(model):
        sd.pop(TIED_KEY, None)
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.cpu().contiguous()
    return out


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError, ...: truncated, corrupt, not safetensors
        raise CheckpointError(f"{path}: cannot read safetensors file (corrupt or truncated?): {e}") from e


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP ('module.') and torch.compile ('_orig_mod.') prefixes."""
    out = {}
    for k, v in sd.items():
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str | Path,
                 drop_derived: bool = False) -> None:
    """Copy `sd` into `model`, refusing missing / unexpected / wrongly shaped tensors.

    A tied model accepts `lm_head.weight` absent (our format) or present (MiniMind .pth); when
    present it must have the embedding's shape and is otherwise ignored (it is the same tensor)."""
    sd = dict(sd)
    if drop_derived:
        sd = {k: v for k, v in sd.items() if not _DERIVED_KEYS.search(k)}
    expected = model.state_dict()
    tied = _is_tied(model)
    if tied and TIED_KEY in sd:
        got = sd.pop(TIED_KEY)
        want = tuple(expected[EMBED_KEY].shape)
        if tuple(got.shape) != want:
            raise CheckpointError(f"{source}: tensor '{TIED_KEY}' has shape {tuple(got.shape)}, expected {want}")
        if EMBED_KEY in sd and not torch.equal(got, sd[EMBED_KEY]):
            raise CheckpointError(f"{source}: tensor '{TIED_KEY}' differs from '{EMBED_KEY}' but the config "
                                  "ties them (tie_word_embeddings=True); use a config with untied embeddings")
    if tied:
        expected.pop(TIED_KEY, None)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                              f"({len(missing)} missing)")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor(s) {unexpected[:8]}"
                              f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} not in the model)")
    for k, want in expected.items():
        if tuple(sd[k].shape) != tuple(want.shape):
            raise CheckpointError(f"{source}: tensor '{k}' has shape {tuple(sd[k].shape)}, "
                                  f"expected {tuple(want.shape)}")
    with torch.no_grad():
        for k, want in expected.items():
            want.copy_(sd[k])


def _file_dtype(sd: dict[str, torch.Tensor]) -> torch.dtype:
    for k in (EMBED_KEY, *sd):
        if k in sd and sd[k].is_floating_point():
            return sd[k].dtype
    return torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _build(cls, cfg: MiniMindConfig, dtype: torch.dtype):
    model = cls(cfg)
    return model.to(dtype) if dtype != torch.float32 else model


# ----------------------------------------------------------------------------- our format
def save_model(model: nn.Module, dir: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write `<dir>/model.safetensors` + `<dir>/config.json` (see module doc). Returns dir."""
    from safetensors.torch import save_file

    kind = _model_kind(model)
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    sd = _plain_state_dict(model)
    cfg = model.config.to_dict()
    cfg["model_kind"] = kind
    cfg["torch_dtype"] = _dtype_name(_file_dtype(sd))
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


def _load_kind(cls, kind: str, dir_or_file, device, dtype):
    p = Path(dir_or_file)
    if p.is_file() and p.suffix in (".pth", ".pt", ".bin"):
        if kind != "causal_lm":
            raise CheckpointError(f"{p}: .pth files hold causal LMs; use load_model")
        cfg = read_checkpoint_config(p)[0] if (p.parent / CONFIG_FILE).is_file() else None
        return load_minimind_pth(p, cfg, device=device, dtype=dtype)
    weights, _ = _resolve(p)
    cfg, raw = read_checkpoint_config(p)
    found = raw.get("model_kind", "causal_lm")
    if found != kind:
        other = "load_score_model" if found == "score" else "load_model"
        raise CheckpointError(f"{weights}: checkpoint holds a {found!r} model, not {kind!r}; use {other}")
    sd = _read_safetensors(weights)
    dtype = dtype or _file_dtype(sd)
    model = _build(cls, cfg, dtype)
    _load_strict(model, sd, weights)
    return model.to(device).eval()


def load_model(dir_or_file: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> MiniMindForCausalLM:
    """Load a causal LM saved by `save_model` (a folder, or its model.safetensors file).

    A `.pth`/`.pt` path is read as a MiniMind native state dict (see `load_minimind_pth`), using a
    config.json next to it when there is one. dtype None = the dtype stored in the file. Returned in
    eval mode."""
    return _load_kind(MiniMindForCausalLM, "causal_lm", dir_or_file, device, dtype)


def load_score_model(dir_or_file: str | Path, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None) -> MiniMindScoreModel:
    """Load a MiniMindScoreModel (critic / reward model) saved by `save_model`. Eval mode."""
    return _load_kind(MiniMindScoreModel, "score", dir_or_file, device, dtype)


# ----------------------------------------------------------------------------- MiniMind .pth
def infer_config_from_state_dict(sd: dict[str, torch.Tensor], num_attention_heads: int | None = None,
                                 num_experts_per_tok: int | None = None, **overrides: Any) -> MiniMindConfig:
    """Infer a MiniMindConfig from tensor shapes of a MiniMind state dict.

    - vocab_size, hidden_size      from model.embed_tokens.weight [V, H]
    - num_hidden_layers            number of distinct model.layers.{i}
    - qk_norm                      q_norm weights present; then head_dim = q_norm size (exact), and
                                   num_attention_heads = q_proj rows / head_dim
    - without qk-norm              num_attention_heads = the hint (default 8: every published MiniMind),
                                   head_dim = q_proj rows / num_attention_heads
    - num_key_value_heads          k_proj rows / head_dim
    - intermediate_size            gate_proj rows (of expert 0 for MoE)
    - use_moe, n_routed_experts, n_shared_experts   from mlp.experts.{j} / mlp.shared_experts.{j} keys
    - num_experts_per_tok          NOT recoverable from shapes: the hint, default 2 (MiniMind's)
    - tie_word_embeddings          lm_head.weight absent or equal to the embedding
    Everything else (rope_theta 1e6, max_position_embeddings 32768, rms_norm_eps 1e-5, special ids)
    keeps MiniMind's defaults; pass `overrides` to change any field.
    """
    sd = _strip_prefixes(sd)
    if EMBED_KEY not in sd:
        raise CheckpointError(f"cannot infer config: no '{EMBED_KEY}' tensor")
    vocab, hidden = sd[EMBED_KEY].shape
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    if not layer_ids:
        raise CheckpointError("cannot infer config: no 'model.layers.{i}.*' tensors")
    L0 = "model.layers.0."
    try:
        q_rows = sd[L0 + "self_attn.q_proj.weight"].shape[0]
        k_rows = sd[L0 + "self_attn.k_proj.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"cannot infer config: missing tensor {e}") from None
    qk_norm = (L0 + "self_attn.q_norm.weight") in sd
    if qk_norm:
        head_dim = sd[L0 + "self_attn.q_norm.weight"].shape[0]
        heads = q_rows // head_dim
    else:
        heads = num_attention_heads or 8
        if q_rows % heads:
            raise CheckpointError(f"cannot infer config: q_proj has {q_rows} rows, not divisible by "
                                  f"num_attention_heads={heads} (pass num_attention_heads=...)")
        head_dim = q_rows // heads
    if k_rows % head_dim:
        raise CheckpointError(f"cannot infer config: k_proj rows {k_rows} not divisible by head_dim {head_dim}")
    experts = {int(m.group(1)) for k in sd if (m := re.match(r"model\.layers\.0\.mlp\.experts\.(\d+)\.", k))}
    shared = {int(m.group(1)) for k in sd
              if (m := re.match(r"model\.layers\.0\.mlp\.shared_experts\.(\d+)\.", k))}
    use_moe = bool(experts)
    ffn_key = L0 + ("mlp.experts.0.gate_proj.weight" if use_moe else "mlp.gate_proj.weight")
    if ffn_key not in sd:
        raise CheckpointError(f"cannot infer config: missing tensor '{ffn_key}'")
    tied = TIED_KEY not in sd or (sd[TIED_KEY].shape == sd[EMBED_KEY].shape
                                  and torch.equal(sd[TIED_KEY], sd[EMBED_KEY]))
    kw: dict[str, Any] = dict(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=max(layer_ids) + 1,
        num_attention_heads=int(heads), num_key_value_heads=int(k_rows // head_dim), head_dim=int(head_dim),
        intermediate_size=int(sd[ffn_key].shape[0]), qk_norm=qk_norm, tie_word_embeddings=tied,
        use_moe=use_moe)
    if use_moe:
        kw.update(n_routed_experts=len(experts), n_shared_experts=len(shared),
                  num_experts_per_tok=min(num_experts_per_tok or 2, len(experts)))
    kw.update(overrides)
    try:
        return MiniMindConfig(**kw)
    except ConfigError as e:
        raise CheckpointError(f"inferred config is invalid: {e}") from e


def load_minimind_pth(path: str | Path, config: MiniMindConfig | None = None, *,
                      num_attention_heads: int | None = None, num_experts_per_tok: int | None = None,
                      device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = torch.float32) -> MiniMindForCausalLM:
    """Load a MiniMind native `.pth` state dict (e.g. `full_sft_512.pth`) into MiniMindForCausalLM.

    Read with `torch.load(weights_only=True, map_location="cpu")`: a pickle that would execute code
    is refused with CheckpointError. Key names are MiniMind's (= ours); 'module.'/'_orig_mod.'
    prefixes are stripped, derived rope buffers (freqs_cos/freqs_sin) ignored, `lm_head.weight` may
    be present or absent when tied. `config` None = inferred from shapes (`infer_config_from_state_dict`,
    hints `num_attention_heads` (default 8) and `num_experts_per_tok` (default 2)). MiniMind saves
    fp16; the model is built in `dtype` (default float32; None = the file's dtype). Eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (unsafe global), EOFError / RuntimeError (truncated)
        raise CheckpointError(f"{path}: cannot load as a weights-only state dict "
                              f"(torch.load weights_only=True refused or failed): {e}") from e
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # {'model': state_dict, 'optimizer': ...} resume files
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    sd = {k: v for k, v in _strip_prefixes(sd).items() if not _DERIVED_KEYS.search(k)}
    if config is None:
        try:
            config = infer_config_from_state_dict(sd, num_attention_heads, num_experts_per_tok)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from e
    dtype = dtype or _file_dtype(sd)
    model = _build(MiniMindForCausalLM, config, dtype)
    if not config.tie_word_embeddings and TIED_KEY not in sd:
        raise CheckpointError(f"{path}: missing tensor(s) ['{TIED_KEY}'] (config has untied embeddings)")
    _load_strict(model, sd, path)
    return model.to(device).eval()


# ----------------------------------------------------------------------------- Hugging Face
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
    """The transformers config.json for a dense MiniMindConfig (Llama, or Qwen3 with qk-norm)."""
    if cfg.use_moe:
        raise NotImplementedError("MoE MiniMind cannot be exported to Hugging Face: LlamaForCausalLM and "
                                  "Qwen3ForCausalLM have no mixture-of-experts layers (save_model instead)")
    rope_scaling, rope_parameters = _hf_rope(cfg)
    d: dict[str, Any] = {
        "architectures": ["Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"],
        "model_type": "qwen3" if cfg.qk_norm else "llama",
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
        "use_cache": True, "torch_dtype": _dtype_name(dtype), "dtype": _dtype_name(dtype),
    }
    if cfg.qk_norm:
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_hidden_layers)
    else:
        d.update(mlp_bias=False, pretraining_tp=1)
    return d


def export_hf(model: MiniMindForCausalLM, dir: str | Path, dtype: torch.dtype = torch.float32,
              tokenizer_dir: str | Path | None = None) -> Path:
    """Write a folder `transformers.AutoModelForCausalLM.from_pretrained(dir)` (and vLLM) loads as
    LlamaForCausalLM (no qk-norm) or Qwen3ForCausalLM (qk-norm) with our logits:
    config.json, generation_config.json, model.safetensors (+ the files of `tokenizer_dir`).
    MoE models raise NotImplementedError; LoRA models must be merged first."""
    from safetensors.torch import save_file

    if not isinstance(model, MiniMindForCausalLM):
        raise TypeError(f"export_hf needs a MiniMindForCausalLM, got {type(model).__name__}")
    cfg = model.config
    hf_cfg = hf_config_dict(cfg, dtype)  # raises for MoE before anything is written
    sd = _plain_state_dict(model, dtype)
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
    """MiniMindConfig from a Llama / Qwen3 transformers config dict (refuses features we lack)."""
    mt = raw.get("model_type")
    if mt not in ("llama", "qwen3"):
        raise CheckpointError(f"{source}: model_type {mt!r} is not supported (llama or qwen3)")
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
            qk_norm=mt == "qwen3", tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=_first_id(raw.get("bos_token_id"), d.bos_token_id),
            eos_token_id=_first_id(raw.get("eos_token_id"), d.eos_token_id),
            pad_token_id=_first_id(raw.get("pad_token_id"), d.pad_token_id),
            initializer_range=raw.get("initializer_range", d.initializer_range))
    except (KeyError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: cannot map to MiniMindConfig: {e}") from e


def import_hf(dir: str | Path, device: str | torch.device = "cpu",
              dtype: torch.dtype | None = None) -> MiniMindForCausalLM:
    """Load a Hugging Face Llama / Qwen3 folder (config.json + model.safetensors, or a sharded
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
        sd = _read_safetensors(source)
    elif index.is_file():
        source = index
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd = {}
        for s in shards:
            sd.update(_read_safetensors(dir / s))
    else:
        raise CheckpointError(f"no {MODEL_FILE} or model.safetensors.index.json in {dir}")
    sd = {k: v for k, v in sd.items() if not _DERIVED_KEYS.search(k)}
    if not cfg.tie_word_embeddings and TIED_KEY not in sd:
        raise CheckpointError(f"{source}: missing tensor(s) ['{TIED_KEY}'] (tie_word_embeddings is false)")
    dtype = dtype or _file_dtype(sd)
    model = _build(MiniMindForCausalLM, cfg, dtype)
    _load_strict(model, sd, source)
    return model.to(device).eval()
