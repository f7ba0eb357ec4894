"""MiniMindConfig: every architectural knob of the model family, typed and validated.

Field names follow MiniMind / Hugging Face Llama so that a MiniMind `config.json` loads
as-is (`MiniMindConfig.from_dict`) and export to `transformers` is a rename-free mapping.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the value."""


@dataclass
class MiniMindConfig:
    vocab_size: int = 6400
    """Tokenizer vocabulary size (MiniMind's BPE has 6400)."""
    hidden_size: int = 512
    """Width of the residual stream."""
    num_hidden_layers: int = 8
    """Number of decoder blocks."""
    num_attention_heads: int = 8
    """Query heads; must divide hidden_size unless head_dim is given."""
    num_key_value_heads: int = 2
    """Key/value heads for grouped-query attention; must divide num_attention_heads."""
    head_dim: int | None = None
    """Per-head width; None means hidden_size // num_attention_heads."""
    intermediate_size: int | None = None
    """SwiGLU hidden width; None means MiniMind's rule 64 * ceil(int(8/3 * hidden) / 64)."""
    max_position_embeddings: int = 32768
    """Longest sequence RoPE tables are built for."""
    rms_norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    rope_theta: float = 1e6
    """RoPE base frequency."""
    rope_scaling: dict[str, Any] | None = None
    """YaRN settings for long-context inference, e.g. {"type": "yarn", "factor": 16,
    "original_max_position_embeddings": 2048, "beta_fast": 32, "beta_slow": 1}; None = plain RoPE."""
    qk_norm: bool = False
    """RMSNorm on each query/key head before RoPE (MiniMind-3 / Qwen3 style)."""
    tie_word_embeddings: bool = True
    """Share the input embedding with the output projection."""
    dropout: float = 0.0
    """Dropout on attention probabilities and residual branches (training only)."""
    hidden_act: str = "silu"
    """Activation of the gated FFN; only 'silu' (SwiGLU) is supported."""
    bos_token_id: int = 1
    """<|im_start|>."""
    eos_token_id: int = 2
    """<|im_end|>: generation stops here."""
    pad_token_id: int = 0
    """<|endoftext|> doubles as padding."""
    initializer_range: float = 0.02
    """Std of the normal init of linear and embedding weights."""
    # --- mixture of experts (ignored unless use_moe) ---
    use_moe: bool = False
    """Replace every FFN by shared + routed experts."""
    n_routed_experts: int = 4
    """Experts chosen by the router."""
    n_shared_experts: int = 1
    """Experts every token always goes through."""
    num_experts_per_tok: int = 2
    """Top-k routed experts per token."""
    norm_topk_prob: bool = True
    """Renormalise the top-k router probabilities to sum to one (for k = 1 too: the weight is then 1,
    as in MiniMind-3; MiniMind v2 never renormalised k = 1, which is norm_topk_prob=False)."""
    aux_loss_alpha: float = 0.1
    """Weight of the load-balance auxiliary loss (0 disables it)."""
    seq_aux: bool = True
    """Compute the load-balance loss per sequence (DeepSeek style) instead of per batch."""
    scoring_func: str = "softmax"
    """Router scoring function; only 'softmax' is supported."""

    def __post_init__(self) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 64 * ((int(self.hidden_size * 8 / 3) + 63) // 64)
        if self.head_dim is None:
            self._check(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                        f"must divide hidden_size={self.hidden_size}")
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    def _check(self, ok: bool, name: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"MiniMindConfig.{name}={getattr(self, name)!r}: {why}")

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings"):
            self._check(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name,
                        "must be a positive integer")
        self._check(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
                    f"must divide num_attention_heads={self.num_attention_heads}")
        self._check(self.head_dim % 2 == 0, "head_dim", "must be even for RoPE")
        self._check(self.rope_theta > 0, "rope_theta", "must be positive")
        self._check(0 < self.rms_norm_eps < 1, "rms_norm_eps", "must be in (0, 1)")
        self._check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        self._check(self.hidden_act == "silu", "hidden_act", "only 'silu' (SwiGLU) is supported")
        self._check(self.scoring_func == "softmax", "scoring_func", "only 'softmax' is supported")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            self._check(0 <= getattr(self, name) < self.vocab_size, name,
                        f"must be a token id below vocab_size={self.vocab_size}")
        if self.rope_scaling is not None:
            self._check(isinstance(self.rope_scaling, dict) and
                        self.rope_scaling.get("type", self.rope_scaling.get("rope_type")) == "yarn",
                        "rope_scaling", "only {'type': 'yarn', ...} is supported")
            self._check(float(self.rope_scaling.get("factor", 0)) >= 1, "rope_scaling",
                        "yarn 'factor' must be >= 1")
        if self.use_moe:
            self._check(self.n_routed_experts > 0, "n_routed_experts", "must be positive with use_moe")
            self._check(self.n_shared_experts >= 0, "n_shared_experts", "must be >= 0")
            self._check(0 < self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok",
                        f"must be in [1, n_routed_experts={self.n_routed_experts}]")
            self._check(self.aux_loss_alpha >= 0, "aux_loss_alpha", "must be >= 0")

    # ---- (de)serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MiniMindConfig":
        """Build from a dict, ignoring keys this dataclass does not know (e.g. a MiniMind or
        Hugging Face config.json carries `architectures`, `torch_dtype`, ...)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "inference_rope_scaling" in d and d.get("rope_scaling") is None and d["inference_rope_scaling"]:
            kw["rope_scaling"] = dict(YARN_DEFAULT)
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "MiniMindConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e

    def replace(self, **kw: Any) -> "MiniMindConfig":
        return dataclasses.replace(self, **kw)


YARN_DEFAULT: dict[str, Any] = {"type": "yarn", "factor": 16, "original_max_position_embeddings": 2048,
                                "beta_fast": 32, "beta_slow": 1, "attention_factor": 1.0}

PRESETS: dict[str, dict[str, Any]] = {
    # published MiniMind sizes (parameter counts checked in tests/test_config.py)
    "minimind2-small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2),
    "minimind2": dict(hidden_size=768, num_hidden_layers=16, num_attention_heads=8, num_key_value_heads=2),
    "minimind2-moe": dict(hidden_size=640, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                          use_moe=True, n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2),
    "minimind3": dict(hidden_size=768, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                      intermediate_size=2432, qk_norm=True, rms_norm_eps=1e-6),
    # MiniMind-3 MoE: 4 routed experts of the dense FFN size, one per token, no shared expert,
    # batch-level load-balance loss 5e-4 (model_minimind.py of MiniMind-3)
    "minimind3-moe": dict(hidden_size=768, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                          intermediate_size=2432, qk_norm=True, rms_norm_eps=1e-6, use_moe=True,
                          n_routed_experts=4, n_shared_experts=0, num_experts_per_tok=1, norm_topk_prob=True,
                          aux_loss_alpha=5e-4, seq_aux=False),
    # tiny presets for CPU tests and demos
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, max_position_embeddings=1024),
    "tiny-moe": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=96, max_position_embeddings=1024, use_moe=True,
                     n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2),
    "tiny-qk": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=128, max_position_embeddings=1024, qk_norm=True),
    # CPU demo size: ~3M params with vocab 1024, trains at several k tokens/s on 2 cores
    "demo": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                 intermediate_size=512, max_position_embeddings=2048),
}


def preset(name: str, **overrides: Any) -> MiniMindConfig:
    """A named preset, optionally with fields overridden (e.g. vocab_size of your tokenizer)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return MiniMindConfig(**{**PRESETS[name], **overrides})
