"""Truncated importance sampling of the rollout/learner mismatch: the weights and statistics by hand,
and Monte-Carlo checks that with samples drawn from a known perturbed policy the corrected
gradient's expectation is the on-policy gradient while the uncorrected one is not."""
import math

import pytest
import torch

from learner.losses import DAPOLoss, DrGRPOLoss, KLConfig, mismatch_stats, tis_weights
from learner.stages import RLUpdateConfig


def test_weights_and_stats_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, -4.0]])
    roll = torch.tensor([[-1.5, -1.0, -0.5], [-1.2, -0.3, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    w, s = tis_weights(old, roll, mask, cap=2.0)
    want = [[math.exp(0.5), math.exp(-1.0), 1.0], [2.0, 1.0, 0.0]]   # e^1 = 2.72 truncated to 2
    assert torch.allclose(w, torch.tensor(want))
    assert s["tis_truncated_frac"] == pytest.approx(1 / 5)
    assert s["mismatch_abs_mean"] == pytest.approx((0.5 + 1.0 + 0 + 1.0 + 0) / 5)
    assert s["mismatch_abs_max"] == pytest.approx(1.0)   # the masked-out 5.0 is not counted
    d = torch.tensor([0.5, -1.0, 0.0, 1.0, 0.0])
    assert s["mismatch_kl"] == pytest.approx(float((d.exp() - d - 1).mean()), abs=1e-6)
    ws, ss = tis_weights(old, roll, mask, cap=2.0, level="sequence")
    assert torch.allclose(ws, torch.tensor([math.exp(-0.5), 2.0]))     # e^(0.5−1), e^(1+0) truncated
    assert ss["tis_truncated_frac"] == 0.5
    keys = ("mismatch_abs_mean", "mismatch_abs_max", "mismatch_kl")
    assert mismatch_stats(old, roll, mask) == {k: s[k] for k in keys}
    with pytest.raises(ValueError, match="must have the same"):
        mismatch_stats(old, roll[:, :2], mask)
    with pytest.raises(ValueError, match="cap"):
        RLUpdateConfig(tis_cap=0.5)
    with pytest.raises(ValueError, match="level"):
        RLUpdateConfig(tis_cap=2.0, tis_level="tokens")


def test_weights_multiply_the_policy_term_only():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old, ref = logp.detach() + 0.01, logp.detach() - 0.3
    mask, adv = torch.ones(1, 2), torch.tensor([1.0])
    fn = DAPOLoss(overlong_shaping=False, kl=KLConfig(coef=0.5))
    base, _ = fn(logp, old, ref, adv, mask)
    pg_only, _ = DAPOLoss(overlong_shaping=False)(logp, old, ref, adv, mask)
    kl = base - pg_only
    w = torch.tensor([[3.0, 3.0]])
    weighted, _ = fn(logp, old, ref, adv, mask, weights=w)
    assert weighted.item() == pytest.approx(3 * pg_only.item() + kl.item(), rel=1e-6)
    with pytest.raises(ValueError, match="weights shape"):
        fn(logp, old, ref, adv, mask, weights=torch.ones(2, 2))


def _chunked_grad(loss_of_chunk, n_chunks):
    """Per-chunk gradient estimates [n_chunks, P] -> (mean, standard error of the mean)."""
    g = torch.stack([loss_of_chunk(k) for k in range(n_chunks)])
    return g.mean(0), g.std(0) / math.sqrt(n_chunks)


def test_monte_carlo_token_level_correction_recovers_the_on_policy_gradient():
    """One decision per sample from a 6-way categorical π_θ; the engine samples from the perturbed
    q = softmax(θ + δ). J(θ) = E_π[f(a)], exact ∇J = π ⊙ (f − π·f). The DAPO loss with ratio 1 and
    advantage f(a) estimates −∇J on on-policy samples; on q's samples it does so only with the
    weights min(π/q, C) (C above every ratio: nothing truncated, unbiased). 40,000 samples in 20
    chunks; tolerance 4 standard errors per component."""
    gen = torch.Generator().manual_seed(1234)
    theta = torch.tensor([0.5, -0.3, 0.0, 1.0, -1.0, 0.2], dtype=torch.float64)
    delta = torch.tensor([0.8, -0.6, 0.4, -0.7, 0.5, -0.3], dtype=torch.float64)
    f = torch.tensor([1.0, 0.0, 0.5, 0.2, 2.0, -1.0], dtype=torch.float64)
    pi, q = torch.softmax(theta, 0), torch.softmax(theta + delta, 0)
    exact = pi * (f - (pi * f).sum())
    cap = 10.0
    assert float((pi / q).max()) < cap
    n_chunks, per = 20, 2000
    draws = torch.multinomial(q, n_chunks * per, replacement=True, generator=gen).view(n_chunks, per)
    loss_fn = DAPOLoss(overlong_shaping=False)

    def grad(k, corrected):
        th = theta.clone().requires_grad_(True)
        a = draws[k]
        logp = torch.log_softmax(th, 0)[a].unsqueeze(-1)                      # [N, 1]
        mask = torch.ones_like(logp)
        weights = None
        if corrected:
            weights, stats = tis_weights(logp.detach(), torch.log(q)[a].unsqueeze(-1), mask, cap)
            assert stats["tis_truncated_frac"] == 0.0
        loss, _ = loss_fn(logp, logp.detach(), None, f[a], mask, weights=weights)
        loss.backward()
        return -th.grad                                                       # estimates ∇J

    est, se = _chunked_grad(lambda k: grad(k, True), n_chunks)
    raw, raw_se = _chunked_grad(lambda k: grad(k, False), n_chunks)
    assert float(se.max()) < 0.1 * float(exact.abs().max())                  # the test can see a bias
    assert bool(((est - exact).abs() <= 4 * se).all()), (est, exact, se)
    assert float(((raw - exact).abs() / raw_se).max()) > 10, (raw, exact, raw_se)


def test_monte_carlo_sequence_level_correction_on_a_two_token_policy():
    """Responses of 2 tokens from a 3-token vocabulary: π(y) = π1(y1)·π2(y2|y1) with tabular logits;
    the engine samples from a perturbed table. Exact ∇J of J = Σ_y π(y) f(y) by enumerating the 9
    responses; the Dr.GRPO loss (sum over the 2 tokens / (N·2)) times 2 estimates −∇J with the
    sequence-level weights min(π(y)/q(y), C). 40,000 responses in 20 chunks, 4 standard errors."""
    gen = torch.Generator().manual_seed(99)
    t1 = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    t2 = torch.tensor([[0.5, -0.5, 0.0], [0.0, 0.7, -0.7], [-0.4, 0.2, 0.6]], dtype=torch.float64)
    d1 = torch.tensor([0.6, -0.5, 0.2], dtype=torch.float64)
    d2 = torch.tensor([[-0.5, 0.4, 0.1], [0.5, -0.6, 0.3], [0.3, 0.3, -0.6]], dtype=torch.float64)
    f = torch.tensor([[1.0, 0.0, 0.3], [0.0, 2.0, -1.0], [0.5, 0.5, 1.5]], dtype=torch.float64)
    a, b = t1.clone().requires_grad_(True), t2.clone().requires_grad_(True)
    J = (torch.softmax(a, 0).unsqueeze(-1) * torch.softmax(b, -1) * f).sum()
    J.backward()
    exact = torch.cat([a.grad, b.grad.flatten()])
    q1, q2 = torch.softmax(t1 + d1, 0), torch.softmax(t2 + d2, -1)
    n_chunks, per = 20, 2000
    y1 = torch.multinomial(q1, n_chunks * per, replacement=True, generator=gen)
    y2 = torch.multinomial(q2[y1], 1, generator=gen).squeeze(-1)
    roll_all = torch.stack([torch.log(q1)[y1], torch.log(q2)[y1, y2]], -1)
    cap = 10.0
    loss_fn = DrGRPOLoss(max_response_len=2)

    def grad(k, corrected):
        s = slice(k * per, (k + 1) * per)
        a, b = t1.clone().requires_grad_(True), t2.clone().requires_grad_(True)
        logp = torch.stack([torch.log_softmax(a, 0)[y1[s]], torch.log_softmax(b, -1)[y1[s], y2[s]]], -1)
        mask = torch.ones_like(logp)
        weights = None
        if corrected:
            weights, stats = tis_weights(logp.detach(), roll_all[s], mask, cap, level="sequence")
            assert stats["tis_truncated_frac"] == 0.0
        loss, _ = loss_fn(logp, logp.detach(), None, f[y1[s], y2[s]], mask, weights=weights)
        (2 * loss).backward()
        return -torch.cat([a.grad, b.grad.flatten()])

    est, se = _chunked_grad(lambda k: grad(k, True), n_chunks)
    raw, raw_se = _chunked_grad(lambda k: grad(k, False), n_chunks)
    assert float(se.max()) < 0.1 * float(exact.abs().max())
    assert bool(((est - exact).abs() <= 4 * se).all()), (est, exact, se)
    assert float(((raw - exact).abs() / raw_se).max()) > 10, (raw, exact, raw_se)
