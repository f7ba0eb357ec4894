import math

import pytest
import torch

from learner.losses import (
    aggregate,
    entropy_from_logits,
    global_counts,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

torch.manual_seed(0)


def _close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- masked ops

def test_masked_sum_mean_var_by_hand():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, 5.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert _close(masked_sum(x, m), 1 + 2 + 3 + 5)
    assert _close(masked_sum(x, m, dim=-1), [3.0, 8.0])
    assert _close(masked_mean(x, m), 11 / 4)
    assert _close(masked_mean(x, m, dim=-1), [1.5, 4.0])
    # values 1,2,3,5: mean 2.75, squared deviations 3.0625+0.5625+0.0625+5.0625 = 8.75
    assert _close(masked_var(x, m, unbiased=False), 8.75 / 4)
    assert _close(masked_var(x, m), 8.75 / 3)
    assert _close(masked_var(x, m), torch.tensor([1.0, 2, 3, 5]).var())


def test_masked_mean_empty_mask_is_zero_not_nan():
    x = torch.randn(2, 3)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, 5.0]])
    m = torch.tensor([[1.0, 1, 0], [1, 0, 1]])
    w = masked_whiten(x, m)
    vals = w[m.bool()]
    assert _close(vals.mean(), 0.0)
    assert _close(vals.std(), 1.0, tol=1e-5)
    assert w[0, 2] == 0 and w[1, 1] == 0  # padding does not get garbage
    ref = (torch.tensor([1.0, 2, 3, 5]) - 2.75) / math.sqrt(8.75 / 3 + 1e-8)
    assert _close(vals, ref)
    w2 = masked_whiten(x, m, shift_mean=False)
    assert _close(w2[m.bool()], ref + 2.75)


# ----------------------------------------------------------------------------- logits

def test_logprobs_from_logits_matches_log_softmax():
    logits = torch.randn(2, 5, 11, dtype=torch.float32)
    toks = torch.randint(0, 11, (2, 5))
    ref = torch.log_softmax(logits, -1).gather(-1, toks.unsqueeze(-1)).squeeze(-1)
    assert _close(logprobs_from_logits(logits, toks), ref, tol=1e-5)
    # bf16 path: fp32 result close to the fp32 computation on the bf16 values
    lb = logits.bfloat16()
    out = logprobs_from_logits(lb, toks)
    assert out.dtype == torch.float32
    ref_b = torch.log_softmax(lb.float(), -1).gather(-1, toks.unsqueeze(-1)).squeeze(-1)
    assert _close(out, ref_b, tol=1e-5)


def test_logprobs_from_logits_grad():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    toks = torch.tensor([[0, 3, 1]])
    logprobs_from_logits(logits, toks).sum().backward()
    # d/dz log softmax(z)[k] = onehot(k) − softmax(z)
    expect = torch.nn.functional.one_hot(toks, 4).float() - torch.softmax(logits.detach(), -1)
    assert _close(logits.grad, expect, tol=1e-6)


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, -10.0, -10.0, -10.0]]])
    h = entropy_from_logits(logits)
    assert _close(h[0, 0], math.log(4), tol=1e-6)
    assert h[0, 1] < 1e-6
    x = torch.randn(2, 3, 7)
    p = torch.softmax(x, -1)
    assert _close(entropy_from_logits(x), -(p * p.log()).sum(-1), tol=1e-5)


# ----------------------------------------------------------------------------- KL

def test_kl_estimators_by_hand():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    d = [-0.5, 1.0, 0.0]  # ref − logp
    assert _close(kl_estimate(logp, ref, "k1"), [0.5, -1.0, 0.0])
    assert _close(kl_estimate(logp, ref, "k2"), [0.125, 0.5, 0.0])
    assert _close(kl_estimate(logp, ref, "k3"), [math.exp(x) - x - 1 for x in d])


def test_kl_zero_when_equal_and_k3_nonnegative():
    logp = torch.randn(4, 6)
    for kind in ("k1", "k2", "k3"):
        assert torch.all(kl_estimate(logp, logp.clone(), kind) == 0)
    ref = torch.randn(4, 6) * 5
    assert torch.all(kl_estimate(logp, ref, "k3") >= 0)
    assert torch.all(kl_estimate(logp, ref, "k2") >= 0)
    # extreme δ does not overflow
    big = kl_estimate(torch.tensor([-1000.0]), torch.tensor([0.0]), "k3")
    assert torch.isfinite(big).all()


def test_kl_unknown_kind():
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_k3_is_unbiased_kl_on_samples():
    # E_{x~p}[k3] = KL(p‖q): p, q categorical, exact expectation
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    est = (p * kl_estimate(p.log(), q.log(), "k3")).sum()
    est1 = (p * kl_estimate(p.log(), q.log(), "k1")).sum()
    kl = (p * (p.log() - q.log())).sum()
    assert _close(est, kl, tol=1e-6) and _close(est1, kl, tol=1e-6)


# ----------------------------------------------------------------------------- aggregate

V = torch.tensor([[1.0, 2.0, 3.0, 4.0],
                  [5.0, 6.0, 7.0, 8.0],
                  [9.0, 10.0, 11.0, 12.0]])
M = torch.tensor([[1, 1, 1, 0],
                  [1, 0, 0, 0],
                  [1, 1, 1, 1]], dtype=torch.float32)


def test_aggregate_by_hand():
    # token-mean: (1+2+3 + 5 + 9+10+11+12) / 8 = 53/8
    assert _close(aggregate(V, M, "token-mean"), 53 / 8)
    # seq-mean-token-mean: (2 + 5 + 10.5) / 3
    assert _close(aggregate(V, M, "seq-mean-token-mean"), 17.5 / 3)
    # seq-mean-token-sum-norm: 53 / (3*4)
    assert _close(aggregate(V, M, "seq-mean-token-sum-norm"), 53 / 12)
    assert _close(aggregate(V, M, "seq-mean-token-sum-norm", max_len=10), 53 / 30)
    assert _close(aggregate(V, M), 53 / 8)  # default token-mean


def test_aggregate_unknown_mode_lists_valid():
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        aggregate(V, M, "sum")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("splits", [[1, 2], [2, 1], [1, 1, 1]])
def test_aggregate_shard_invariance(mode, splits):
    full = aggregate(V, M, mode)
    g = global_counts(M)
    parts, start = [], 0
    for n in splits:
        parts.append(aggregate(V[start:start + n], M[start:start + n], mode, **g))
        start += n
    assert _close(sum(parts), full)
    # without global counts the pieces do NOT sum to the full loss
    naive, start = 0.0, 0
    for n in splits:
        naive = naive + aggregate(V[start:start + n], M[start:start + n], mode)
        start += n
    assert not _close(naive, full)


def test_aggregate_shard_invariance_random_with_trimmed_microbatch():
    torch.manual_seed(1)
    v = torch.randn(6, 9)
    m = (torch.rand(6, 9) > 0.3).float()
    m[4:, 7:] = 0  # the last two rows end early, so their micro-batch can be trimmed to 7
    for mode in ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]:
        full = aggregate(v, m, mode)
        g = global_counts(m)
        a = aggregate(v[:4], m[:4], mode, **g)
        b = aggregate(v[4:, :7], m[4:, :7], mode, **g)  # max_len stays the global 9
        assert _close(a + b, full, tol=1e-5)
