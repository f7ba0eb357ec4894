"""MiniMind native `.pth` import: state dicts named as MiniMind's own `model_minimind.py` names them.

Shapes give the architecture; what shapes cannot tell (rms_norm_eps, rope theta / scaling, experts per
token, norm_topk_prob, the load-balance loss) comes, in this order of precedence, from
  1. explicit keyword arguments (`load_minimind_pth(..., rms_norm_eps=1e-6)`; every MiniMindConfig field),
  2. a `config.json` next to the `.pth` (MiniMind v2 or MiniMind-3 `MiniMindConfig`, or ours),
  3. the defaults of the MiniMind generation the shapes show: qk-norm weights present = MiniMind-3
     (eps 1e-6, one routed expert per token, no shared expert, batch-level aux loss 5e-4),
     otherwise MiniMind v2 (eps 1e-5, top-2 routing, one shared expert, sequence aux loss 0.1).
A shape-derived field that a config.json or an argument contradicts is an error naming both values.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch

from ..config import YARN_DEFAULT, ConfigError, MiniMindConfig
from ..model import MiniMindForCausalLM
from .common import (CONFIG_FILE, DERIVED_KEYS, EMBED_KEY, TIED_KEY, CheckpointError, build, file_dtype,
                     load_strict, strip_prefixes)

PTH_SUFFIXES = (".pth", ".pt", ".bin")

# values MiniMind's code uses for what shapes cannot show (model/model_minimind.py of each generation)
MINIMIND2_DEFAULTS: dict[str, Any] = dict(
    rms_norm_eps=1e-5, rope_theta=1e6, num_experts_per_tok=2, norm_topk_prob=True,
    aux_loss_alpha=0.1, seq_aux=True)
MINIMIND3_DEFAULTS: dict[str, Any] = dict(
    rms_norm_eps=1e-6, rope_theta=1e6, num_experts_per_tok=1, norm_topk_prob=True,
    aux_loss_alpha=5e-4, seq_aux=False)
# fields the tensors themselves determine: a config.json or argument may only repeat them
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim",
                "intermediate_size", "qk_norm", "use_moe", "n_routed_experts", "n_shared_experts")


def is_minimind3_dict(raw: Mapping[str, Any]) -> bool:
    """MiniMind-3's config carries `num_experts` / `router_aux_loss_coef` (v2: n_routed_experts...)."""
    return any(k in raw for k in ("num_experts", "router_aux_loss_coef", "moe_intermediate_size"))


def fields_from_minimind_config(raw: Mapping[str, Any], source: str | Path = CONFIG_FILE) -> dict[str, Any]:
    """MiniMindConfig fields from a MiniMind v2 / MiniMind-3 / our config.json dict (only keys present)."""
    known = {f.name for f in fields(MiniMindConfig)}
    out: dict[str, Any] = {}
    if is_minimind3_dict(raw):
        names = {"num_experts": "n_routed_experts", "router_aux_loss_coef": "aux_loss_alpha"}
        for k, v in raw.items():
            k = names.get(k, k)
            if k in known and k != "rope_scaling":
                out[k] = v
        if raw.get("use_moe"):
            out["n_shared_experts"] = 0
            out["seq_aux"] = False
            if raw.get("moe_intermediate_size"):
                out["intermediate_size"] = raw["moe_intermediate_size"]
        if raw.get("inference_rope_scaling") or raw.get("rope_scaling"):
            out["rope_scaling"] = dict(raw.get("rope_scaling") or YARN_DEFAULT)
        else:
            out["rope_scaling"] = None
        return out
    out = {k: v for k, v in raw.items() if k in known}
    if raw.get("inference_rope_scaling") and "model_kind" not in raw:
        # MiniMind v2's extrapolation is not YaRN (its own per-dimension beta blend): refuse rather
        # than compute other logits
        raise CheckpointError(f"{source}: inference_rope_scaling=true of MiniMind v2 (its own RoPE "
                              "extrapolation) is not supported; set it to false (training length 2048 and "
                              "below is unaffected)")
    if out.get("use_moe") and out.get("num_experts_per_tok") == 1 and "model_kind" not in raw:
        out["norm_topk_prob"] = False  # v2 renormalises only when k > 1: with k = 1 the weight is p
    return out


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
    - tie_word_embeddings          lm_head.weight absent or equal to the embedding
    Everything else takes the defaults of the generation the shapes show (MINIMIND3_DEFAULTS with
    qk-norm, MINIMIND2_DEFAULTS without); `num_experts_per_tok` and `overrides` replace them.
    """
    sd = strip_prefixes(sd)
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
    kw: dict[str, Any] = dict(MINIMIND3_DEFAULTS if qk_norm else MINIMIND2_DEFAULTS)
    kw.update(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=max(layer_ids) + 1,
        num_attention_heads=int(heads), num_key_value_heads=int(k_rows // head_dim), head_dim=int(head_dim),
        intermediate_size=int(sd[ffn_key].shape[0]), qk_norm=qk_norm, tie_word_embeddings=tied,
        use_moe=use_moe)
    if use_moe:
        kw.update(n_routed_experts=len(experts), n_shared_experts=len(shared))
        if num_experts_per_tok is not None:
            kw["num_experts_per_tok"] = num_experts_per_tok
        kw["num_experts_per_tok"] = min(kw["num_experts_per_tok"], len(experts))
    moe_only = ("n_routed_experts", "n_shared_experts", "num_experts_per_tok")
    for k, v in overrides.items():
        if v is None or (k in moe_only and not use_moe):
            continue  # unset, or an MoE setting of a dense model (MiniMind's configs carry both)
        if k in SHAPE_FIELDS and v != kw.get(k):
            raise CheckpointError(f"config says {k}={v!r} but the tensors give {k}={kw.get(k)!r}")
        kw[k] = v
    try:
        return MiniMindConfig(**kw)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"inferred config is invalid: {e}") from e


def _refusal(path: Path, e: Exception) -> str:
    """One line for a .pth torch.load(weights_only=True) refused: pickled code, or a damaged file."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"{path}: refused: the file holds pickled Python objects ({found.group(1)}), which could run "
                f"code when loaded; only plain tensor state dicts (or safetensors) are loaded")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return f"{path}: not a readable state dict (truncated or corrupt? torch.load says: {first})"


def read_pth_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth` (weights_only), prefixes stripped, derived rope buffers dropped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (unsafe global), EOFError / RuntimeError (truncated)
        raise CheckpointError(_refusal(path, e)) from e
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # {'model': state_dict, 'optimizer': ...} resume files
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k: v for k, v in strip_prefixes(sd).items() if not DERIVED_KEYS.search(k)}


def pth_config(path: str | Path, sd: dict[str, torch.Tensor], config_json: str | Path | None = None,
               num_attention_heads: int | None = None, **overrides: Any) -> MiniMindConfig:
    """The config a `.pth` is loaded with (see the module doc for the order of precedence)."""
    path = Path(path)
    cfg_file = Path(config_json) if config_json is not None else path.parent / CONFIG_FILE
    from_file: dict[str, Any] = {}
    if cfg_file.is_file():
        try:
            raw = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from e
        from_file = fields_from_minimind_config(raw, cfg_file)
    elif config_json is not None:
        raise CheckpointError(f"config file not found: {cfg_file}")
    unknown = sorted(set(overrides) - {f.name for f in fields(MiniMindConfig)})
    if unknown:
        raise CheckpointError(f"unknown MiniMindConfig field(s) {unknown} passed to load a .pth")
    heads = overrides.pop("num_attention_heads", None) or num_attention_heads or from_file.pop(
        "num_attention_heads", None)
    from_file.pop("num_attention_heads", None)
    merged = {**from_file, **{k: v for k, v in overrides.items() if v is not None}}
    if "head_dim" in merged and merged["head_dim"] is None:
        merged.pop("head_dim")
    try:
        return infer_config_from_state_dict(sd, heads, **merged)
    except CheckpointError as e:
        where = f"{path}" + (f" with {cfg_file}" if from_file else "")
        raise CheckpointError(f"{where}: {e}") from e


def load_minimind_pth(path: str | Path, config: MiniMindConfig | None = None, *,
                      num_attention_heads: int | None = None, config_json: str | Path | None = None,
                      device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float32,
                      **config_overrides: Any) -> MiniMindForCausalLM:
    """Load a MiniMind native `.pth` state dict (e.g. `full_sft_512.pth`) into MiniMindForCausalLM.

    Read with `torch.load(weights_only=True, map_location="cpu")`: a pickle that would execute code
    is refused with CheckpointError. Key names are MiniMind's (= ours); 'module.'/'_orig_mod.'
    prefixes are stripped, derived rope buffers (freqs_cos/freqs_sin) ignored, `lm_head.weight` may
    be present or absent when tied. `config` None = shapes + `config_json` (default: a config.json
    next to the file, when present) + `config_overrides` (any MiniMindConfig field, e.g.
    rms_norm_eps=1e-6, num_experts_per_tok=1, rope_theta=..., norm_topk_prob=...), see the module doc.
    MiniMind saves fp16; the model is built in `dtype` (default float32; None = the file's dtype)."""
    path = Path(path)
    sd = read_pth_state_dict(path)
    if config is None:
        config = pth_config(path, sd, config_json, num_attention_heads, **config_overrides)
    elif config_overrides:
        config = config.replace(**config_overrides)
    dtype = dtype or file_dtype(sd)
    model = build(MiniMindForCausalLM, config, dtype)
    if not config.tie_word_embeddings and TIED_KEY not in sd:
        raise CheckpointError(f"{path}: missing tensor(s) ['{TIED_KEY}'] (config has untied embeddings)")
    load_strict(model, sd, path)
    return model.to(device).eval()


@dataclass
class PthOptions:
    """What a MiniMind `.pth` cannot tell by its tensor shapes, for a recipe's `--init x.pth`. Unset
    values come from a config.json next to the file, else from the defaults of the MiniMind
    generation the shapes show (qk-norm = MiniMind-3)."""
    config_json: str | None = None
    """MiniMind's config.json for the .pth (default: the one next to it, when present)."""
    rms_norm_eps: float | None = None
    """RMSNorm epsilon (MiniMind v2: 1e-5, MiniMind-3: 1e-6)."""
    rope_theta: float | None = None
    """RoPE base."""
    num_attention_heads: int | None = None
    """Query heads (without qk-norm the shapes cannot tell them apart from head_dim)."""
    num_experts_per_tok: int | None = None
    """MoE: routed experts per token."""
    norm_topk_prob: bool | None = None
    """MoE: renormalise the top-k routing weights."""

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of load_model / load_minimind_pth for the values that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
