"""KV cache of a continuously changing batch: rows join (after their own prefill) and leave.

`minimind.model.KVCache` gives every row one shared write position, so all rows are kept aligned
on the right: a row whose history is shorter is left-padded (its `key_mask` is False there) and
carries its own RoPE position in `next_pos`. Joining rows and dropping finished ones is one copy
(`rebuild`), which also trims the columns no remaining row uses.
"""
from __future__ import annotations

import torch

from minimind.config import MiniMindConfig
from minimind.model import KVCache

HEADROOM = 64
"""Decode steps a rebuilt cache can take before it has to grow (grow = one more rebuild)."""


def empty_kv(cfg: MiniMindConfig, device, dtype) -> KVCache:
    return KVCache(cfg, 0, 0, device, dtype)


class BatchCache:
    def __init__(self, cfg: MiniMindConfig, device, dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.kv = empty_kv(cfg, device, dtype)
        self.key_mask = torch.zeros((0, 0), dtype=torch.bool, device=device)  # [B, max_len]
        self.next_pos = torch.zeros((0, 1), dtype=torch.long, device=device)   # [B, 1]

    @property
    def rows(self) -> int:
        return self.key_mask.shape[0]

    def rebuild(self, keep: torch.Tensor | None, new: KVCache | None = None,
                new_mask: torch.Tensor | None = None, new_pos: torch.Tensor | None = None) -> None:
        """Keep rows `keep` (None = all) and append the rows of a prefilled cache `new`
        (its key mask [b, new.pos] and next positions [b, 1]). Leading columns that no kept row
        attends to are dropped; the result has HEADROOM free positions."""
        L = self.kv.pos
        keep = torch.arange(self.rows, device=self.device) if keep is None else keep
        old_mask = self.key_mask[keep, :L]
        used = old_mask.any(0).nonzero()
        first = int(used[0]) if len(used) else L
        lo = L - first
        pn = new.pos if new is not None else 0
        width = max(lo, pn)
        b_old, b_new = len(keep), (new_mask.shape[0] if new is not None else 0)
        cap = width + HEADROOM
        shape = (b_old + b_new, self.cfg.num_key_value_heads, cap, self.cfg.head_dim)
        ks, vs = [], []
        for layer in range(self.cfg.num_hidden_layers):
            for src, dst in ((self.kv.k, ks), (self.kv.v, vs)):
                t = torch.zeros(shape, device=self.device, dtype=self.dtype)
                if b_old and lo:
                    t[:b_old, :, width - lo:width] = src[layer][keep, :, first:L]
                if b_new:
                    new_src = new.k if src is self.kv.k else new.v
                    t[b_old:, :, width - pn:width] = new_src[layer][:, :, :pn]
                dst.append(t)
        mask = torch.zeros((b_old + b_new, cap), dtype=torch.bool, device=self.device)
        if b_old and lo:
            mask[:b_old, width - lo:width] = old_mask[:, first:L]
        pos = [self.next_pos[keep]]
        if b_new:
            mask[b_old:, width - pn:width] = new_mask.bool()
            pos.append(new_pos)
        kv = empty_kv(self.cfg, self.device, self.dtype)
        kv.k, kv.v, kv.max_len, kv.pos = ks, vs, cap, width
        self.kv, self.key_mask, self.next_pos = kv, mask, torch.cat(pos)

    def step_mask(self) -> torch.Tensor:
        """Make room for one more position and return the attention mask [B, pos + 1] for it."""
        if self.kv.pos + 1 > self.kv.max_len:
            self.rebuild(None)
        self.key_mask[:, self.kv.pos] = True
        return self.key_mask[:, :self.kv.pos + 1]


def repeat_rows(cfg: MiniMindConfig, cache: KVCache, idx: torch.Tensor) -> KVCache:
    """A cache holding rows `idx` of `cache` (the n choices of one prompt share its prefill)."""
    out = empty_kv(cfg, cache.k[0].device if cache.k else "cpu", cache.k[0].dtype if cache.k else None)
    out.k = [k[idx, :, :cache.pos] for k in cache.k]
    out.v = [v[idx, :, :cache.pos] for v in cache.v]
    out.max_len = out.pos = cache.pos
    return out
