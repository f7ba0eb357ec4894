"""Log-probabilities of response tokens, as the RL stages compute them: only the real response
positions go through the LM head, at the sampling temperature, with a fused selective log-softmax
backward. Rows that share a prompt (the G samples of a GRPO group) run that prompt through the trunk
once, and the responses' padding is packed away."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minimind.model import MiniMindForCausalLM, Packed

from ..losses import entropy_from_logits, logprobs_from_logits


class PromptKV:
    """The keys and values of a pass over distinct prompts, kept in the autograd graph, that the
    response pass of every row attends to (the `KVCache` interface the model's attention calls).

    A prompt's hidden states never depend on what follows it (causal attention), so G rows that share
    a prompt need its forward once: the prompt pass records each layer's keys/values of the U distinct
    prompts, `rows(inverse)` hands them to the B rows (an index_select, whose backward sums the rows'
    gradients into their prompt), and the response pass appends its own keys behind them."""

    def __init__(self) -> None:
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.pos = 0
        self.recording = True

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.recording:
            self.k.append(k)
            self.v.append(v)
            return k, v
        return torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)

    def advance(self, t: int) -> None:
        self.pos += t

    def rows(self, inverse: torch.Tensor) -> "PromptKV":
        out = PromptKV()
        out.k = [k.index_select(0, inverse) for k in self.k]
        out.v = [v.index_select(0, inverse) for v in self.v]
        out.pos, out.recording = self.pos, False
        return out


def distinct_prompts(seq: torch.Tensor, attn: torch.Tensor, P: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of one row per distinct prompt [U], each row's distinct prompt [B]): rows are the same
    prompt when their first P tokens and their mask agree."""
    key = torch.cat([seq[:, :P], attn[:, :P].to(seq.dtype)], 1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(seq), dtype=torch.long, device=seq.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(seq), device=seq.device), reduce="amin")
    return first, inverse


def response_hidden(trunk: nn.Module, seq: torch.Tensor, attn: torch.Tensor, R: int) -> tuple[torch.Tensor, Packed]:
    """([N, H] final hidden states of a MiniMind trunk (`model.model`) at the positions that predict each
    of the N real response tokens, where those tokens sit in [B, R]).

    The distinct prompts go through the trunk once (PromptKV), then the responses behind them, each pass
    with its padding packed away (`MiniMindModel.hidden_at`): a right-padded response (the contract's
    layout) runs its real tokens but the last, whose hidden state predicts nothing."""
    P = seq.shape[1] - R
    if P < 1:
        raise ValueError(f"response_hidden: sequences of {seq.shape[1]} tokens hold no prompt before their "
                         f"{R} response tokens; the first response token needs a prompt token to predict it")
    first, inverse = distinct_prompts(seq, attn, P)
    kv = PromptKV()
    at_end = (torch.arange(P, device=seq.device) == P - 1).expand(len(first), P)
    last, _ = trunk.hidden_at(seq[first, :P], attn[first, :P], at_end, cache=kv)   # [U, H] position P-1
    resp = attn[:, P:].bool()
    predicts = F.pad(resp[:, 1:], (0, 1), value=False)                  # the next position is a real token
    h_resp, _ = trunk.hidden_at(seq[:, P:], attn, predicts, cache=kv.rows(inverse))
    # response token t of row b is predicted by its prompt's last hidden state (t = 0), else by the
    # response pass at t - 1: the positions t - 1 are `predicts`, so h_resp holds those predictions in
    # the wanted tokens' own (row-by-row) order. One gather from [last; h_resp]
    wanted = Packed(resp)
    b, later = wanted.index // R, wanted.index % R > 0
    src = torch.where(later, len(first) + later.long().cumsum(0) - 1, inverse[b])
    return torch.cat([last, h_resp]).index_select(0, src), wanted


def response_logits(model: MiniMindForCausalLM, seq: torch.Tensor, attn: torch.Tensor, R: int,
                    temperature: float) -> tuple[torch.Tensor, Packed]:
    """([N, V] logits that predicted each of the N real response tokens, at the sampling temperature;
    where those tokens sit in [B, R]). Only those positions go through the LM head."""
    h, wanted = response_hidden(model.model, seq, attn, R)
    logits = model.lm_head(h).float()
    return (logits / temperature if temperature not in (0.0, 1.0) else logits), wanted


def response_logprobs(model, seq, attn, R, temperature) -> torch.Tensor:
    """[B, R] log-probabilities of the response tokens (0 on padding)."""
    logits, wanted = response_logits(model, seq, attn, R, temperature)
    return wanted.unpack(logprobs_from_logits(logits, wanted.pack(seq[:, -R:])))


class _SelectiveLogSoftmax(torch.autograd.Function):
    """(log softmax(logits)[tokens], logsumexp(logits)) for fp32 logits [B, R, V].

    Same forward as `logprobs_from_logits` (gather − logsumexp). The backward writes
    g·(onehot − softmax) into ONE [B, R, V] buffer (exp, scale and scatter in place) where autograd's
    gather − logsumexp builds a zero-filled scatter buffer and a softmax buffer and adds them: the
    same values (each element is the same two-operand sum), in less time and memory
    (docs/performance_notes.md).
    The logsumexp output is not differentiable (it feeds the entropy statistic)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor):
        idx = tokens.long().unsqueeze(-1)
        lse = torch.logsumexp(logits, dim=-1)
        logp = torch.gather(logits, -1, idx).squeeze(-1) - lse
        ctx.save_for_backward(logits, lse, idx)
        ctx.mark_non_differentiable(lse)
        return logp, lse

    @staticmethod
    def backward(ctx, g: torch.Tensor, _g_lse: torch.Tensor | None):
        logits, lse, idx = ctx.saved_tensors
        grad = (logits - lse.unsqueeze(-1)).exp_()        # softmax
        grad.mul_(-g.unsqueeze(-1))                        # the logsumexp branch: −g·softmax
        grad.scatter_add_(-1, idx, g.unsqueeze(-1))        # the gather branch: +g at the token
        return grad, None


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable log p(tokens) [B, R] and the (detached) entropy [B, R] of fp32 logits, sharing
    one logsumexp. Entropy H = lse − Σ softmax·z (as `entropy_from_logits`)."""
    if logits.dtype != torch.float32:
        logp = logprobs_from_logits(logits, tokens)
        with torch.no_grad():
            return logp, entropy_from_logits(logits)
    logp, lse = _SelectiveLogSoftmax.apply(logits, tokens)
    with torch.no_grad():
        z = logits.detach()
        p = (z - lse.unsqueeze(-1)).exp_()
        ent = lse - p.mul_(z).sum(dim=-1)
    return logp, ent
