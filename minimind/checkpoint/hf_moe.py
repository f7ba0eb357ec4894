"""MoE MiniMind as a transformers MoE architecture that computes the same function.

- qk-norm, no shared expert (MiniMind-3 MoE)  -> `Qwen3MoeForCausalLM`: same router (softmax, top-k,
  `norm_topk_prob` for every k), same per-expert parameter names: the export is a config.
- no qk-norm (MiniMind v2 MoE)                 -> `Qwen2MoeForCausalLM`, with all-zero q/k/v biases (the
  original Qwen2-MoE, and vLLM's implementation of it, always have them). Qwen2-MoE
  has ONE shared expert scaled by sigmoid(shared_expert_gate(x)); MiniMind adds its shared experts
  unscaled. So the shared experts are concatenated into one (a sum of SwiGLU FFNs is one SwiGLU FFN
  of the summed width), the gate is written as zeros (sigmoid(0) = 1/2 exactly) and the shared
  down projection doubled: exact in every float format, since both factors are powers of two.
  Without shared experts a width-1 all-zero shared expert stands in (it adds exactly 0).
qk-norm together with shared experts has no transformers equivalent and is refused.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from ..config import MiniMindConfig

_SHARED = re.compile(r"^(model\.layers\.\d+\.mlp\.)shared_experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def moe_architecture(cfg: MiniMindConfig) -> tuple[str, str]:
    """(architecture, model_type) of the transformers model that computes this MoE's function."""
    if cfg.qk_norm:
        if cfg.n_shared_experts:
            raise NotImplementedError(
                f"MoE with qk-norm and n_shared_experts={cfg.n_shared_experts} has no transformers "
                "equivalent (Qwen3-MoE has no shared expert; Qwen2-MoE has no qk-norm): save_model instead")
        return "Qwen3MoeForCausalLM", "qwen3_moe"
    return "Qwen2MoeForCausalLM", "qwen2_moe"


def moe_config_fields(cfg: MiniMindConfig) -> dict[str, Any]:
    arch, _ = moe_architecture(cfg)
    d: dict[str, Any] = dict(
        num_experts=cfg.n_routed_experts, num_experts_per_tok=cfg.num_experts_per_tok,
        moe_intermediate_size=cfg.intermediate_size, norm_topk_prob=cfg.norm_topk_prob,
        decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=cfg.aux_loss_alpha,
        output_router_logits=False)
    if arch == "Qwen2MoeForCausalLM":
        d.update(qkv_bias=True, shared_expert_intermediate_size=cfg.n_shared_experts * cfg.intermediate_size or 1)
    return d


def moe_state_dict(cfg: MiniMindConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our MoE tensors renamed / merged for `moe_architecture(cfg)` (routed experts keep their names)."""
    arch, _ = moe_architecture(cfg)
    if arch == "Qwen3MoeForCausalLM":
        return dict(sd)
    out: dict[str, torch.Tensor] = {}
    shared: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for k, v in sd.items():
        m = _SHARED.match(k)
        if m:
            shared.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = v
        else:
            out[k] = v
    ref = sd["model.embed_tokens.weight"]
    H = cfg.hidden_size
    for i in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{i}.mlp."
        experts = [shared[prefix][j] for j in sorted(shared.get(prefix, {}))]
        if experts:
            gate = torch.cat([e["gate_proj"] for e in experts], 0)
            up = torch.cat([e["up_proj"] for e in experts], 0)
            down = torch.cat([e["down_proj"] for e in experts], 1) * 2  # undoes sigmoid(0) = 1/2
        else:
            gate, up, down = ref.new_zeros(1, H), ref.new_zeros(1, H), ref.new_zeros(H, 1)
        out[prefix + "shared_expert.gate_proj.weight"] = gate.contiguous()
        out[prefix + "shared_expert.up_proj.weight"] = up.contiguous()
        out[prefix + "shared_expert.down_proj.weight"] = down.contiguous()
        out[prefix + "shared_expert_gate.weight"] = ref.new_zeros(1, H)
        for proj in ("q_proj", "k_proj", "v_proj"):
            w = sd[f"model.layers.{i}.self_attn.{proj}.weight"]
            out[f"model.layers.{i}.self_attn.{proj}.bias"] = w.new_zeros(w.shape[0])
    return out
