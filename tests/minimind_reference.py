"""A small stand-in for MiniMind's own `model_minimind.py` (v2 and MiniMind-3), written for the tests.

It names modules exactly as MiniMind's code does (so its `state_dict()` is what a MiniMind `.pth`
holds) and computes the forward pass the way MiniMind does: RMSNorm on float then cast, RoPE tables
from `precompute_freqs_cis`, repeat_kv + explicit causal softmax attention, and the two MoE routers
(v2: MoEGate with `weight`, shared experts, renormalisation only when k > 1; MiniMind-3: `gate`
Linear, no shared experts, renormalisation for every k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RefConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    generation: int = 2  # 2 = MiniMind v2 (no qk-norm, MoEGate), 3 = MiniMind-3 (qk-norm, gate Linear)
    vocab_size: int = 6400
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    max_position_embeddings: int = 512
    use_moe: bool = False
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    norm_topk_prob: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps))).type_as(x)


def freqs(dim, end, base):
    f = 1.0 / (base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    f = torch.outer(torch.arange(end), f).float()
    return torch.cat([f.cos(), f.cos()], -1), torch.cat([f.sin(), f.sin()], -1)


def rot(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), -1)


class Attention(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.c = c
        h, kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, h * d, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, kv * d, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, kv * d, bias=False)
        self.o_proj = nn.Linear(h * d, c.hidden_size, bias=False)
        if c.generation == 3:
            self.q_norm, self.k_norm = RMSNorm(d, c.rms_norm_eps), RMSNorm(d, c.rms_norm_eps)

    def forward(self, x, cos, sin):
        c = self.c
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, c.num_attention_heads, c.head_dim)
        k = self.k_proj(x).view(B, T, c.num_key_value_heads, c.head_dim)
        v = self.v_proj(x).view(B, T, c.num_key_value_heads, c.head_dim)
        if c.generation == 3:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = cos[:T].unsqueeze(1), sin[:T].unsqueeze(1)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        rep = c.num_attention_heads // c.num_key_value_heads
        k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        s = q @ k.transpose(-2, -1) / math.sqrt(c.head_dim)
        s = s + torch.full((T, T), float("-inf")).triu(1)
        y = F.softmax(s.float(), -1).type_as(q) @ v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEGate(nn.Module):  # v2
    def __init__(self, c: RefConfig):
        super().__init__()
        self.c = c
        self.weight = nn.Parameter(torch.randn(c.n_routed_experts, c.hidden_size) * 0.1)

    def forward(self, x):
        scores = F.linear(x, self.weight).softmax(-1)
        w, idx = torch.topk(scores, self.c.num_experts_per_tok, -1, sorted=False)
        if self.c.num_experts_per_tok > 1 and self.c.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return idx, w


class MoEFeedForward(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.c = c
        self.experts = nn.ModuleList(FeedForward(c) for _ in range(c.n_routed_experts))
        if c.generation == 2:
            self.gate = MoEGate(c)
            self.shared_experts = nn.ModuleList(FeedForward(c) for _ in range(c.n_shared_experts))
        else:
            self.gate = nn.Linear(c.hidden_size, c.n_routed_experts, bias=False)

    def forward(self, x):
        B, T, H = x.shape
        flat = x.reshape(-1, H)
        if self.c.generation == 2:
            idx, w = self.gate(flat)
        else:
            scores = F.softmax(self.gate(flat), -1)
            w, idx = torch.topk(scores, self.c.num_experts_per_tok, -1, sorted=False)
            if self.c.norm_topk_prob:
                w = w / (w.sum(-1, keepdim=True) + 1e-20)
        y = torch.zeros_like(flat)
        for i, expert in enumerate(self.experts):
            mask = idx == i
            if mask.any():
                tok = mask.any(-1).nonzero().flatten()
                y.index_add_(0, tok, expert(flat[tok]) * w[mask].view(-1, 1))
        y = y.view(B, T, H)
        for s in getattr(self, "shared_experts", []):
            y = y + s(x)
        return y


class Block(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.self_attn = Attention(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MoEFeedForward(c) if c.use_moe else FeedForward(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Trunk(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        cos, sin = freqs(c.head_dim, c.max_position_embeddings, c.rope_theta)
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)


class RefMiniMindForCausalLM(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.model = Trunk(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.model.embed_tokens.weight = self.lm_head.weight
        with torch.no_grad():  # non-trivial norm weights so eps and norm mapping matter
            for n, p in self.named_parameters():
                if "norm" in n:
                    p.copy_(1 + 0.2 * torch.randn_like(p))
                elif p.dim() == 2:
                    p.normal_(0, 0.02)

    def forward(self, ids):
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, self.model.freqs_cos, self.model.freqs_sin)
        return self.lm_head(self.model.norm(x))
