"""Log-probabilities of response tokens, as the RL stages compute them: only the response positions
go through the LM head, at the sampling temperature, with a fused selective log-softmax backward.
Rows that share a prompt (the G samples of a GRPO group) run that prompt through the trunk once."""
from __future__ import annotations

import torch
from torch import nn

from minimind.model import MiniMindForCausalLM

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


def response_hidden(trunk: nn.Module, seq: torch.Tensor, attn: torch.Tensor, R: int) -> torch.Tensor:
    """[B, R, H] final hidden states at the positions that predict each response token (P-1 .. P+R-2)
    of a MiniMind trunk (`model.model`). With rows sharing a prompt, the prompts go through the trunk
    once (PromptKV); otherwise one pass over the whole sequences."""
    P = seq.shape[1] - R
    if P > 0 and len(seq) > 1:
        first, inverse = distinct_prompts(seq, attn, P)
        if len(first) < len(seq):
            kv = PromptKV()
            h_prompt, _ = trunk(seq[first, :P], attn[first, :P], cache=kv)
            h_resp, _ = trunk(seq[:, P:], attn, cache=kv.rows(inverse))
            return torch.cat([h_prompt[:, -1:].index_select(0, inverse), h_resp[:, :-1]], 1)
    h, _ = trunk(seq, attn)
    return h[:, -R - 1:-1]


def response_logits(model: MiniMindForCausalLM, seq: torch.Tensor, attn: torch.Tensor, R: int,
                    temperature: float) -> torch.Tensor:
    """[B, R, V] logits that predicted each response token, at the sampling temperature. Only the R
    positions before each response token go through the LM head (the prompt's logits are never needed)."""
    logits = model.lm_head(response_hidden(model.model, seq, attn, R)).float()
    return logits / temperature if temperature not in (0.0, 1.0) else logits


def response_logprobs(model, seq, attn, R, temperature) -> torch.Tensor:
    return logprobs_from_logits(response_logits(model, seq, attn, R, temperature), seq[:, -R:])


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
