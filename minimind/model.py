"""The MiniMind decoder in one file: Dense and MoE, GQA, RoPE (+YaRN), RMSNorm, SwiGLU, qk-norm.

Module and parameter names are those of MiniMind's own `model_minimind.py` (which are those
of Hugging Face Llama/Qwen3), so a MiniMind `.pth` state dict loads directly and the
Hugging Face export is a dtype cast, not a rewrite.

Padding: prompts may be LEFT-padded. Pass `attention_mask` [B, T] (1 = real token); position
ids then default to `cumsum(mask) - 1`, so a left-padded prompt sees exactly the positions it
would see alone, and padded keys are never attended. A loss that needs hidden states at some
positions only (RL response tokens, SFT labels) calls `MiniMindModel.hidden_at`, which runs the
position-wise layers on those positions and the real tokens before them, padding packed away (`Packed`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MiniMindConfig

IGNORE_INDEX = -100
"""Label of a token that carries no loss (what torch's cross_entropy ignores by default)."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # the fused kernel: bitwise the same as below in fp32, 1.6-4x faster forward on CPU
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # normalise in fp32 (bf16 mean-of-squares loses too much), cast back, then scale
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


# ----------------------------------------------------------------------------- RoPE
def rope_inv_freq(cfg: MiniMindConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] and the attention (cos/sin) scale.

    YaRN follows the published method (and Hugging Face's `rope_type="yarn"`): frequencies whose
    wavelength is short compared with the original context are kept (extrapolated), long ones are
    interpolated by `factor`, with a linear ramp between `beta_fast` and `beta_slow` rotations.
    """
    dim, base = cfg.head_dim, cfg.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    inv_freq = 1.0 / pos_freqs
    rs = cfg.rope_scaling
    if rs is None:
        return inv_freq.float(), 1.0
    factor = float(rs["factor"])
    orig = int(rs.get("original_max_position_embeddings", cfg.max_position_embeddings))
    beta_fast, beta_slow = float(rs.get("beta_fast", 32)), float(rs.get("beta_slow", 1))
    attn_factor = rs.get("attention_factor")
    if attn_factor is None:
        attn_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(n_rot: float) -> float:
        return (dim * math.log(orig / (n_rot * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    inv_freq = (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation
    return inv_freq.float(), float(attn_factor)


def rope_tables(cfg: MiniMindConfig, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [length, head_dim] in the rotate-half layout (Llama / MiniMind)."""
    inv_freq, scale = rope_inv_freq(cfg)
    t = torch.arange(length, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * scale, emb.sin() * scale


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [B, H, T, D]; cos/sin [B, 1, T, D]
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------- KV cache
class KVCache:
    """Preallocated keys/values for every layer: [B, n_kv_heads, max_len, head_dim].

    All rows share one write position (prompts are left-padded to one length), so a decode step
    is a slice assignment, never a per-row Python loop.
    """

    def __init__(self, cfg: MiniMindConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.max_len = max_len
        self.pos = 0  # number of positions filled

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        end = self.pos + t
        if end > self.max_len:
            raise RuntimeError(f"KVCache overflow: need {end} positions, allocated {self.max_len}")
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, t: int) -> None:
        self.pos += t

    def repeat_rows(self, n: int, max_len: int) -> KVCache:
        """A cache with n copies of each row (row i -> rows i*n .. i*n+n-1) holding the filled
        positions, with room for `max_len`: a prompt prefilled once serves its n samples."""
        out = copy.copy(self)

        def grow(t: torch.Tensor) -> torch.Tensor:
            big = t.new_empty((t.shape[0] * n, t.shape[1], max_len, t.shape[3]))
            big[:, :, :self.pos] = t[:, :, :self.pos].repeat_interleave(n, 0)
            return big

        out.k, out.v, out.max_len = [grow(t) for t in self.k], [grow(t) for t in self.v], max_len
        return out

    def reorder(self, idx: torch.Tensor) -> None:
        """Keep rows `idx` (e.g. drop finished sequences)."""
        self.k = [k.index_select(0, idx) for k in self.k]
        self.v = [v.index_select(0, idx) for v in self.v]


# ----------------------------------------------------------------------------- packing
class Packed:
    """The kept positions of a [B, T] batch packed into N rows, row by row (padding removed).

    The position-wise layers (projections, MLP, norms, and the caller's head) then run on [N, H]
    instead of [B, T, H]: RL responses are right-padded to the longest one, so most of a padded
    batch can be padding. Attention alone unpacks to [B, T] (zeros where nothing was kept): a
    position that was not kept must be one that no kept position attends to (padding, or a row's
    last token when no later position of the row is wanted), which the attention mask ensures."""

    def __init__(self, keep: torch.Tensor):
        self.B, self.T = keep.shape
        self.keep = keep.reshape(-1).bool()                      # [B*T]
        self.index = self.keep.nonzero().squeeze(-1)             # [N] flat positions in B*T

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [N, ...]"""
        return x.reshape(self.B * self.T, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] -> [B, T, ...], zeros where nothing was kept (differentiable)."""
        out = x.new_zeros(self.B * self.T, *x.shape[1:]).index_copy(0, self.index, x)
        return out.view(self.B, self.T, *x.shape[1:])

    def ranks(self, positions: torch.Tensor) -> torch.Tensor:
        """[M] packed index of each of `positions` [B, T] bool (kept ones), in row-by-row order."""
        return (self.keep.long().cumsum(0) - 1)[positions.reshape(-1).nonzero().squeeze(-1)]


def feed_for(wanted: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the positions a pass must run for the hidden states at `wanted` to be exact: the
    wanted ones and every real token before a row's last wanted one (the keys they attend to); what
    follows a row's last wanted position, and padding, is never needed."""
    later = (wanted.flip(-1).long().cumsum(-1).flip(-1) - wanted.long()) > 0
    return wanted | (real.bool() & later)


# ----------------------------------------------------------------------------- blocks
# rows x heads x head_dim from which decode_attention beats SDPA on CPU (measured on 2 cores:
# tiny 4x16 heads wins from batch 64, minimind2-small 8x64 from batch 4; below, its extra ops cost more)
DECODE_MATMUL_MIN_WORK = 2048


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     attn_mask: torch.Tensor | None) -> torch.Tensor:
    """One query per row: q [B, H, 1, D], cached k/v [B, Hkv, S, D], mask [B, 1, 1, S] or None.

    Query heads are grouped by the kv head they share (head h reads kv head h // (H / Hkv), as in
    SDPA's enable_gqa), so two batched matmuls serve every head without repeating k/v. On CPU this
    is 2-2.5x faster than SDPA's flash kernel, which is built for long query blocks.
    """
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    scores = torch.matmul(q.reshape(B, Hkv, H // Hkv, D), k.transpose(-1, -2)) * D ** -0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = scores.float().softmax(-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(B, H, 1, D)


class Attention(nn.Module):
    def __init__(self, cfg: MiniMindConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, attn_mask, layer_idx: int, cache: KVCache | None, causal: bool = True,
                packed: Packed | None = None):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if packed is not None:   # x is [N, H]: the projections ran on kept tokens only
            q, k, v = packed.unpack(q), packed.unpack(k), packed.unpack(v)
        B, T, _ = q.shape
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv, self.head_dim)
        v = v.view(B, T, self.n_kv, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
        if (T == 1 and cache is not None and not self.training and x.device.type == "cpu"
                and B * self.n_heads * self.head_dim >= DECODE_MATMUL_MIN_WORK):
            y = decode_attention(q, k, v, attn_mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=causal and attn_mask is None,
                dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.n_kv != self.n_heads)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        if packed is not None:
            y = packed.pack(y)
        return self.resid_dropout(self.o_proj(y))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: MiniMindConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class MoEGate(nn.Module):
    """Softmax router with top-k selection and the load-balance auxiliary loss."""

    def __init__(self, cfg: MiniMindConfig):
        super().__init__()
        self.top_k, self.n_experts = cfg.num_experts_per_tok, cfg.n_routed_experts
        self.norm_topk_prob, self.alpha, self.seq_aux = cfg.norm_topk_prob, cfg.aux_loss_alpha, cfg.seq_aux
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor):
        B, T, H = x.shape
        scores = F.linear(x.reshape(-1, H), self.weight).softmax(dim=-1)  # [N, E]
        topk_w, topk_idx = scores.topk(self.top_k, dim=-1, sorted=False)    # [N, k]
        if self.norm_topk_prob:
            # for every k, as MiniMind-3 and transformers' MoE models do: with k = 1 the weight is 1.
            # (MiniMind v2 skipped it for k = 1, which is norm_topk_prob=False; see checkpoint import)
            topk_w = topk_w / (topk_w.sum(dim=-1, keepdim=True) + 1e-20)
        aux = scores.new_zeros(())
        if self.training and self.alpha > 0:
            if self.seq_aux:
                # per sequence: fraction of routed slots per expert (scaled so uniform = 1) x mean prob
                counts = scores.new_zeros(B, self.n_experts).scatter_add_(
                    1, topk_idx.view(B, -1), scores.new_ones(B, T * self.top_k))
                load = counts / (T * self.top_k / self.n_experts)
                aux = (load * scores.view(B, T, -1).mean(dim=1)).sum(dim=1).mean() * self.alpha
            else:
                load = F.one_hot(topk_idx.view(-1), self.n_experts).float().mean(0) * self.n_experts
                aux = (scores.mean(0) * load).sum() * self.alpha
        return topk_idx, topk_w, aux


class MoEFeedForward(nn.Module):
    def __init__(self, cfg: MiniMindConfig):
        super().__init__()
        self.experts = nn.ModuleList(FeedForward(cfg) for _ in range(cfg.n_routed_experts))
        self.gate = MoEGate(cfg)
        self.shared_experts = nn.ModuleList(FeedForward(cfg) for _ in range(cfg.n_shared_experts))
        self.aux_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:   # packed tokens [N, H]: routed as one row (its aux loss is not per sequence)
            return self.forward(x.unsqueeze(0)).squeeze(0)
        B, T, H = x.shape
        idx, w, self.aux_loss = self.gate(x)
        flat = x.reshape(-1, H)
        k = idx.shape[1]
        # group the (token, slot) pairs by expert with one sort: Python loops over experts only
        order = idx.view(-1).argsort(stable=True)
        counts = torch.bincount(idx.view(-1), minlength=len(self.experts)).tolist()
        token_of = order // k
        out = torch.zeros_like(flat)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            sel = order[start:start + n]
            tok = token_of[start:start + n]
            y = self.experts[e](flat.index_select(0, tok)) * w.view(-1, 1).index_select(0, sel).to(flat.dtype)
            out.index_add_(0, tok, y)
            start += n
        out = out.view(B, T, H)
        for shared in self.shared_experts:
            out = out + shared(x)
        return out


class Block(nn.Module):
    def __init__(self, cfg: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = Attention(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoEFeedForward(cfg) if cfg.use_moe else FeedForward(cfg)

    def forward(self, x, cos, sin, attn_mask, cache, causal: bool = True, packed: Packed | None = None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, self.layer_idx, cache, causal, packed)
        return x + self.mlp(self.post_attention_layernorm(x))


# ----------------------------------------------------------------------------- models
@dataclass
class ModelOutput:
    logits: torch.Tensor | None      # [B, T, V] (or [B, len(logits_slice), V])
    hidden_states: torch.Tensor      # [B, T, H] after the final norm
    loss: torch.Tensor | None = None  # mean next-token CE over labels != -100 (+ aux_loss)
    aux_loss: torch.Tensor | None = None  # MoE load-balance loss (0 for dense)


def positions_from_mask(attention_mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position ids that skip left padding: [B, T] = cumsum(mask) - 1 (pads clamped to 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0) + offset


def build_attn_mask(key_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Boolean SDPA mask [B, 1, q_len, S] for queries at the last q_len of S key positions:
    causal AND key is real. Each query may always see itself, so a padded query row is never
    fully masked (that would give NaN through softmax)."""
    B, S = key_mask.shape
    q_pos = torch.arange(S - q_len, S, device=key_mask.device).view(q_len, 1)
    k_pos = torch.arange(S, device=key_mask.device).view(1, S)
    causal = k_pos <= q_pos
    allowed = causal.unsqueeze(0) & key_mask.bool().view(B, 1, S)
    allowed = allowed | (k_pos == q_pos).unsqueeze(0)
    return allowed.unsqueeze(1)


def attention_plan(attention_mask: torch.Tensor | None, batch: int, past: int, q_len: int,
                   device) -> tuple[torch.Tensor | None, bool]:
    """(boolean mask or None, is_causal) for SDPA.

    Without padding no mask tensor is built: a full sequence is plain causal and a single decode
    query sees every cached key. SDPA then takes its fused causal kernel instead of the masked
    path, as transformers does (with fused RMSNorm and AdamW: bench/train.py 1.016x -> 1.089x)."""
    if attention_mask is None or bool(attention_mask.all()):
        if past == 0:
            return None, True
        if q_len == 1:
            return None, False
        attention_mask = torch.ones(batch, past + q_len, dtype=torch.bool, device=device)
    return build_attn_mask(attention_mask, q_len), False


class MiniMindModel(nn.Module):
    """Embedding + decoder blocks + final norm (the trunk shared by LM, critic and reward model)."""

    def __init__(self, cfg: MiniMindConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        cos, sin = rope_tables(cfg, cfg.max_position_embeddings)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                packed: Packed | None = None):
        """(hidden states after the final norm [B, T, H], MoE aux loss). `packed`: only its kept
        positions run through the position-wise layers, and the hidden states come back packed [N, H]."""
        B, T = input_ids.shape
        past = cache.pos if cache is not None else 0
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
            else:
                # attention_mask covers the cache plus the new tokens: [B, past + T]
                position_ids = positions_from_mask(attention_mask)[:, -T:]
        if int(position_ids.max()) >= self.rope_cos.shape[0]:
            raise ValueError(f"position {int(position_ids.max())} exceeds max_position_embeddings="
                             f"{self.rope_cos.shape[0]}")
        cos = self.rope_cos[position_ids].unsqueeze(1).to(self.embed_tokens.weight.dtype)
        sin = self.rope_sin[position_ids].unsqueeze(1).to(self.embed_tokens.weight.dtype)
        attn_mask, causal = attention_plan(attention_mask, B, past, T, input_ids.device)
        x = self.dropout(self.embed_tokens(input_ids if packed is None else packed.pack(input_ids)))
        for layer in self.layers:
            x = layer(x, cos, sin, attn_mask, cache, causal, packed)
        if cache is not None:
            cache.advance(T)
        aux = sum((layer.mlp.aux_loss for layer in self.layers if isinstance(layer.mlp, MoEFeedForward)),
                  x.new_zeros(()))
        return self.norm(x), aux

    def hidden_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, wanted: torch.Tensor,
                  cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden states [N, H] at the N `wanted` positions [B, T] (bool), row by row; MoE aux
        loss). Only those positions and the real tokens before them run through the position-wise
        layers (`feed_for`): padding and whatever follows a row's last wanted position are skipped.
        With a `cache`, `attention_mask` covers the cached positions too, as in `forward`."""
        T = input_ids.shape[1]
        real = torch.ones_like(wanted) if attention_mask is None else attention_mask[:, -T:].bool()
        packed = Packed(feed_for(wanted, real))
        h, aux = self(input_ids, attention_mask, cache=cache, packed=packed)
        return h.index_select(0, packed.ranks(wanted)), aux


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels aligned with the logits that predict them (last position ignored).

    Shifting the labels instead of slicing the [B, T, V] logits avoids a full copy forward and a
    zero-filled full-size gradient backward (1.1-1.5x per training step on CPU)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def init_weights(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)


class MiniMindForCausalLM(nn.Module):
    def __init__(self, cfg: MiniMindConfig):
        super().__init__()
        self.config = cfg
        self.model = MiniMindModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        init_weights(self, cfg.initializer_range)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                cache: KVCache | None = None, logits_slice: slice | None = None) -> ModelOutput:
        """`labels` [B, T] are the input ids themselves (shifted inside, -100 ignored), as in HF.
        `logits_slice`: the positions to return logits for, e.g. slice(-1, None) for the next token."""
        if labels is not None and logits_slice is not None:
            raise ValueError("labels need the logits of every position: pass labels or logits_slice, not both")
        h, aux = self.model(input_ids, attention_mask, position_ids, cache)
        # only the positions asked for go through the LM head (slicing [B, T, V] logits afterwards
        # would cost a copy forward and a zero-filled full-size gradient backward)
        logits = self.lm_head(h if logits_slice is None else h[:, logits_slice])
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                   shift_labels(labels).reshape(-1), ignore_index=IGNORE_INDEX) + aux
        return ModelOutput(logits=logits, hidden_states=h, loss=loss, aux_loss=aux)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


class MiniMindScoreModel(nn.Module):
    """Trunk + scalar head: the PPO critic and the reward model. Returns one value per position."""

    def __init__(self, cfg: MiniMindConfig):
        super().__init__()
        self.config = cfg
        self.model = MiniMindModel(cfg)
        self.score = nn.Linear(cfg.hidden_size, 1, bias=False)
        init_weights(self, cfg.initializer_range)
        nn.init.zeros_(self.score.weight)  # start every value at 0: no initial bias in GAE / BT

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        h, _ = self.model(input_ids, attention_mask, position_ids)
        return self.score(h).squeeze(-1).float()  # [B, T]


def last_token_values(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] value at the last real token of each row (right or left padded)."""
    T = attention_mask.shape[1]
    idx = T - 1 - attention_mask.long().flip(-1).argmax(-1)
    return values.gather(1, idx.view(-1, 1)).squeeze(1)
