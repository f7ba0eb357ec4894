"""Log-probabilities of response tokens, as the RL stages compute them: only the response positions
go through the LM head, at the sampling temperature, with a fused selective log-softmax backward."""
from __future__ import annotations

import torch

from minimind.model import MiniMindForCausalLM

from ..losses import entropy_from_logits, logprobs_from_logits


def response_logits(model: MiniMindForCausalLM, seq: torch.Tensor, attn: torch.Tensor, R: int,
                    temperature: float) -> torch.Tensor:
    """[B, R, V] logits that predicted each response token, at the sampling temperature. Only the R
    positions before each response token go through the LM head (the prompt's logits are never needed)."""
    logits = model(seq, attention_mask=attn, logits_slice=slice(-R - 1, -1)).logits.float()
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
