"""LoRA adapters for MiniMind (or any nn.Module built from nn.Linear).

`apply_lora` swaps every matching `nn.Linear` for a `LoRALinear` that keeps the SAME frozen base
weight Parameter under the SAME key (`...q_proj.weight`) and adds two small trainable matrices:

    y = x W^T (+ b) + dropout(x) A^T B^T * (alpha / rank)       A [rank, in] kaiming, B [out, rank] zeros

so the adapted model starts exactly equal to the base model, and the base part of its state dict
is unchanged (weight sync of the base still works). Adapter keys are `<module>.lora_A.weight` and
`<module>.lora_B.weight` (PEFT's names without the `.default` adapter name).

`merge_lora` folds B @ A * scale into the base weights and puts plain `nn.Linear` modules back,
so the state dict is the plain model's again (save_model / export_hf work on it).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["LoRAConfig", "LoRALinear", "LoRAError", "apply_lora", "lora_parameters", "lora_state_dict",
           "load_lora_state_dict", "save_lora", "load_lora", "merge_lora", "has_lora"]

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRAError(ValueError):
    """An adapter state dict / file does not fit the model; the message names the tensor."""


@dataclass
class LoRAConfig:
    rank: int = 8
    """Rank r of the update B @ A."""
    alpha: float = 16
    """Update scale is alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter input (training only)."""
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Module names (last component, or a dotted suffix such as 'self_attn.q_proj') to adapt."""

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if not (isinstance(self.rank, int) and self.rank > 0):
            raise LoRAError(f"LoRAConfig.rank={self.rank!r}: must be a positive integer")
        if not 0 <= self.dropout < 1:
            raise LoRAError(f"LoRAConfig.dropout={self.dropout!r}: must be in [0, 1)")
        if not self.target_modules:
            raise LoRAError("LoRAConfig.target_modules is empty")


class LoRALinear(nn.Linear):
    """An nn.Linear whose frozen weight (shared with the wrapped layer) gets a low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight                      # same Parameter object: no copy
        self.register_parameter("bias", base.bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=dev, dtype=dt)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=dev, dtype=dt)
        if dev.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x, self.weight, self.bias)
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """B @ A * scale in fp32, shape of the base weight."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def apply_lora(model: nn.Module, cfg: LoRAConfig | None = None) -> nn.Module:
    """Wrap matching nn.Linear modules in place with LoRALinear; freeze every non-adapter parameter.

    Returns the same model. The requires_grad flags it had before are remembered and restored by
    `merge_lora`. Raises LoRAError if the model already has adapters or nothing matches."""
    cfg = cfg or LoRAConfig()
    if has_lora(model):
        raise LoRAError("model already has LoRA adapters (merge_lora first to stack another)")
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    names = [n for n, m in model.named_modules()
             if type(m) is nn.Linear and n and _matches(n, cfg.target_modules)]
    if not names:
        raise LoRAError(f"no nn.Linear module matches target_modules={cfg.target_modules}")
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        _set_submodule(model, n, LoRALinear(model.get_submodule(n), cfg.rank, cfg.alpha, cfg.dropout))
    for p in lora_parameters(model):
        p.requires_grad_(True)
    model._lora_config = cfg                    # plain attributes (not parameters/buffers)
    model._lora_saved_requires_grad = saved
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (A and B of every LoRALinear), in module order."""
    out = []
    for m in model.modules():
        if isinstance(m, LoRALinear):
            out += [m.lora_A.weight, m.lora_B.weight]
    return out


def _is_lora_key(k: str) -> bool:
    return ".lora_A." in k or ".lora_B." in k or k.startswith(("lora_A.", "lora_B."))


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights: {'<module>.lora_A.weight': [r, in], '<module>.lora_B.weight': [out, r]}."""
    sd = {k: v for k, v in model.state_dict().items() if _is_lora_key(k)}
    if not sd:
        raise LoRAError("model has no LoRA adapters (apply_lora first)")
    return sd


def load_lora_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Load adapter weights strictly: every adapter tensor present, nothing else, same shapes."""
    expected = lora_state_dict(model)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        raise LoRAError(f"{source}: missing LoRA tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        raise LoRAError(f"{source}: unexpected tensor(s) {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
                        " (not adapter weights of this model)")
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise LoRAError(f"{source}: tensor '{k}' has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(sd[k])


def save_lora(model: nn.Module, path: str | Path) -> None:
    """Adapter weights to one safetensors file; the LoRAConfig goes in its metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in lora_state_dict(model).items()}
    cfg = getattr(model, "_lora_config", None)
    meta = {"format": "pt"}
    if cfg is not None:
        meta["lora_config"] = json.dumps(asdict(cfg))
    save_file(sd, str(path), metadata=meta)


def read_lora_config(path: str | Path) -> LoRAConfig | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "lora_config" not in meta:
        return None
    return LoRAConfig(**json.loads(meta["lora_config"]))


def load_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Load adapters saved by `save_lora`. If the model has none yet, they are first applied with the
    LoRAConfig stored in the file. Strict (see load_lora_state_dict). Returns the model."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LoRAError(f"LoRA file not found: {path}")
    try:
        sd = load_file(str(path), device="cpu")
        cfg = read_lora_config(path)
    except Exception as e:  # corrupt / truncated / not safetensors
        raise LoRAError(f"{path}: cannot read LoRA safetensors file ({e})") from e
    if not has_lora(model):
        if cfg is None:
            raise LoRAError(f"{path}: model has no adapters and the file stores no LoRAConfig")
        apply_lora(model, cfg)
    load_lora_state_dict(model, sd, source=str(path))
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W += B @ A * scale, computed in fp32) and replace the
    LoRALinear with a plain nn.Linear holding that weight. Restores the requires_grad flags the model
    had before apply_lora. Returns the same model."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not names:
        raise LoRAError("model has no LoRA adapters to merge")
    for n in names:
        m = model.get_submodule(n)
        m.weight.copy_((m.weight.float() + m.delta_weight()).to(m.weight.dtype))
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        lin.weight = m.weight
        if m.bias is not None:
            lin.bias = m.bias
        lin.train(m.training)
        _set_submodule(model, n, lin)
    saved = getattr(model, "_lora_saved_requires_grad", None)
    for name, p in model.named_parameters():
        p.requires_grad_(saved.get(name, True) if saved is not None else True)
    for attr in ("_lora_config", "_lora_saved_requires_grad"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model
