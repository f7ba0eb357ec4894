"""The policy-loss family (Dr.GRPO, DAPO, GSPO, CISPO): values and gradients on a tiny batch computed
by hand (scalar Python), gradients against each paper's closed form, micro-batch additivity, and
the name table the CLI uses."""
import math
from typing import get_args

import pytest
import torch

from learner.losses import (POLICY_LOSSES, CISPOLoss, ClipConfig, DAPOLoss, DrGRPOLoss, GRPOLoss, GSPOLoss, KLConfig,
                            PolicyLossName, dynamic_sampling, make_policy_loss, overlong_reward,
                            population_group_advantages)

# B=2 sequences, T=3; the second has 2 tokens. Token (0,0) has ratio e^0.3 = 1.35 (outside PPO's
# 0.8..1.2 with A>0: clipped); token (1,1) has ratio e^1.8 = 6.05 (above CISPO's cap 5).
LOGP = [[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]]
OLD = [[-1.3, -0.5, -1.7], [-0.4, -3.0, -9.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.0, -2.0]


def tensors():
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    return logp, torch.tensor(OLD, dtype=torch.float64), torch.tensor(MASK, dtype=torch.float64), \
        torch.tensor(ADV, dtype=torch.float64)


def tokens():
    return [(i, t) for i in range(2) for t in range(3) if MASK[i][t]]


def ppo_token(r, A, lo, hi):
    """(loss, d loss / d logp) of one token of the PPO-clip surrogate, by hand."""
    unclipped, clipped = -A * r, -A * min(max(r, 1 - lo), 1 + hi)
    return (unclipped, -A * r) if unclipped >= clipped else (clipped, 0.0)


def check(loss, logp, want_value, want_grad, tol=1e-12):
    loss.backward()
    assert loss.item() == pytest.approx(want_value, abs=tol)
    assert torch.allclose(logp.grad, torch.tensor(want_grad, dtype=torch.float64), atol=tol, rtol=0)


def test_dr_grpo_by_hand():
    logp, old, mask, adv = tensors()
    Lmax = 4  # the generation budget, not the batch's width 3
    loss, stats = DrGRPOLoss(max_response_len=Lmax)(logp, old, None, adv, mask)
    value, grad = 0.0, [[0.0] * 3 for _ in range(2)]
    for i, t in tokens():
        v, g = ppo_token(math.exp(LOGP[i][t] - OLD[i][t]), ADV[i], 0.2, 0.2)
        value += v / (2 * Lmax)
        grad[i][t] = g / (2 * Lmax)
    check(loss, logp, value, grad)
    # the clipped token carries no gradient; ratio 6 with A < 0 is the pessimistic (unclipped) branch
    assert grad[0][0] == 0.0 and grad[1][1] != 0.0
    assert stats["clip_frac"] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="max_response_len"):
        DrGRPOLoss(max_response_len=2)(logp, old, None, adv, mask)


def test_dr_grpo_advantages_are_not_std_scaled():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0])
    uid = torch.tensor([0, 0, 0, 0, 1, 1])
    assert torch.allclose(DrGRPOLoss().compute_advantages(r, uid), torch.tensor([0.75, -0.25, -0.25, -0.25, -1.0, 1.0]))


def test_dapo_by_hand_token_mean_and_clip_higher():
    logp, old, mask, adv = tensors()
    loss, stats = DAPOLoss(overlong_max_len=8)(logp, old, None, adv, mask)
    n_tok = 5
    value, grad = 0.0, [[0.0] * 3 for _ in range(2)]
    for i, t in tokens():
        v, g = ppo_token(math.exp(LOGP[i][t] - OLD[i][t]), ADV[i], 0.2, 0.28)
        value += v / n_tok
        grad[i][t] = g / n_tok
    check(loss, logp, value, grad)
    # clip-higher: ratio 1.35 is still clipped at 1.28, and (1, 2)'s ratio e^0.1 inside
    assert grad[0][0] == 0.0 and grad[0][2] != 0.0
    assert stats["clip_frac"] == pytest.approx(1 / 5)


def test_dapo_overlong_reward_matches_the_paper_piecewise_function():
    L = torch.tensor([0, 5, 6, 7, 8, 9, 10, 11])
    # L_max = 10, L_cache = 4: 0 up to 6, then (6 − L)/4, −1 beyond 10
    want = [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0]
    assert overlong_reward(L, 10, 4).tolist() == want
    with pytest.raises(ValueError, match="buffer"):
        overlong_reward(L, 10, 11)


def test_dapo_advantages_shape_rewards_before_group_normalisation():
    lengths = torch.tensor([3, 9, 10, 3])
    r = torch.tensor([1.0, 1.0, 1.0, 0.0])
    uid = torch.tensor([0, 0, 0, 1])
    loss = DAPOLoss(overlong_max_len=10, overlong_buffer=4)
    shaped = loss.shaped_rewards(r, lengths)
    assert shaped.tolist() == [1.0, 0.25, 0.0, 0.0]
    a = loss.compute_advantages(r, uid, lengths=lengths)
    g = shaped[:3]
    assert torch.allclose(a[:3], (g - g.mean()) / (g.std() + 1e-6))
    assert a[3] == 0.0
    with pytest.raises(ValueError, match="overlong_max_len is not set"):
        DAPOLoss().compute_advantages(r, uid, lengths=lengths)
    with pytest.raises(ValueError, match="needs `lengths`"):   # the loss mask alone is not a length
        loss.compute_advantages(r, uid, mask=torch.ones(4, 10))
    plain = DAPOLoss(overlong_shaping=False).compute_advantages(r, uid)
    assert torch.allclose(plain[:3], torch.zeros(3), atol=1e-6)


def test_gspo_by_hand_sequence_ratio_and_clip():
    logp, old, mask, _ = tensors()
    ADV2 = [1.0, 2.0]
    eps_low, eps_high = 0.05, 0.05  # wide enough that one sequence is inside the range
    fn = GSPOLoss(clip=ClipConfig(eps_low=eps_low, eps_high=eps_high, agg_mode="seq-mean-token-mean"))
    loss, stats = fn(logp, old, None, torch.tensor(ADV2).double(), mask)
    value, grad = 0.0, [[0.0] * 3 for _ in range(2)]
    for i in range(2):
        toks = [t for t in range(3) if MASK[i][t]]
        s = math.exp(sum(LOGP[i][t] - OLD[i][t] for t in toks) / len(toks))
        v, g = ppo_token(s, ADV2[i], eps_low, eps_high)
        value += v / 2
        for t in toks:
            grad[i][t] = g / len(toks) / 2        # d s_i / d logp_it = s_i / |y_i|
    # sequence 0: s = e^0 = 1 (inside), sequence 1: s = e^(1.9/2) = 2.6 (clipped, A > 0)
    check(loss, logp, value, grad)
    assert grad[1] == [0.0, 0.0, 0.0] and grad[0][0] != 0.0
    assert stats["seq_clip_frac"] == 0.5


def test_gspo_token_weights_scale_their_own_tokens_gradient():
    """The issue's repro: one sequence of 2 tokens, logp = old (s = 1), A = 1, token weights (2, 1):
    L = (1/2)·(2·(−s) + 1·(−s)), and token t's gradient is −w_t·A·s/|y| = [−1, −0.5] in both variants
    (weighting the spread sequence loss gave each token the mean weight: [−0.75, −0.75])."""
    for variant, adv in (("sequence", torch.ones(1)), ("token", torch.ones(1, 2))):
        logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
        loss, _ = GSPOLoss(variant=variant)(logp, logp.detach(), None, adv.double(), torch.ones(1, 2),
                                            weights=torch.tensor([[2.0, 1.0]]))
        check(loss, logp, -1.5, [[-1.0, -0.5]])


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_gspo_by_hand_with_token_and_sequence_weights(variant):
    """Hand-computed value and gradient with per-token weights w_it: L = (1/B) Σ_i (1/|y_i|) Σ_t w_it·l_i
    (l_i the sequence's clipped surrogate), ∂L/∂logp_it = w_it·g_i/|y_i|/B; with one weight per
    sequence the value and gradient are GSPO's scaled by w_i."""
    logp, old, mask, _ = tensors()
    ADV2, W = [1.0, 2.0], [[2.0, 0.5, 1.0], [0.25, 3.0, 7.0]]   # (1, 2) is off the mask
    adv = torch.tensor(ADV2, dtype=torch.float64)
    eps = 0.05
    fn = GSPOLoss(clip=ClipConfig(eps_low=eps, eps_high=eps, agg_mode="seq-mean-token-mean"), variant=variant)
    a = adv if variant == "sequence" else adv.unsqueeze(-1).expand(2, 3)
    for weights in (W, [1.5, 0.5]):
        logp.grad = None
        loss, _ = fn(logp, old, None, a, mask, weights=torch.tensor(weights, dtype=torch.float64))
        value, grad = 0.0, [[0.0] * 3 for _ in range(2)]
        for i in range(2):
            toks = [t for t in range(3) if MASK[i][t]]
            s = math.exp(sum(LOGP[i][t] - OLD[i][t] for t in toks) / len(toks))
            v, g = ppo_token(s, ADV2[i], eps, eps)
            for t in toks:
                w = weights[i][t] if isinstance(weights[i], list) else weights[i]
                value += w * v / len(toks) / 2
                grad[i][t] = w * g / len(toks) / 2
        check(loss, logp, value, grad)
    assert grad[1] == [0.0, 0.0, 0.0] and grad[0][0] != 0.0       # sequence 1 is clipped (s = 2.6, A > 0)


def test_gspo_token_variant_equals_gspo_with_sequence_advantages():
    torch.manual_seed(0)
    logp0 = torch.randn(4, 6, dtype=torch.float64) - 1
    old = logp0 + 1e-4 * torch.randn(4, 6, dtype=torch.float64)
    mask = (torch.arange(6) < torch.tensor([[6], [3], [5], [1]])).double()
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=torch.float64)
    out = {}
    for variant, a in (("sequence", adv), ("token", adv.unsqueeze(-1).expand(4, 6))):
        logp = logp0.clone().requires_grad_(True)
        loss, _ = GSPOLoss(variant=variant)(logp, old, None, a, mask)
        loss.backward()
        out[variant] = (loss.detach(), logp.grad)
    assert torch.allclose(out["sequence"][0], out["token"][0], atol=1e-14)
    assert torch.allclose(out["sequence"][1], out["token"][1], atol=1e-14)
    with pytest.raises(ValueError, match="variant='token'"):
        GSPOLoss()(logp0, old, None, adv.unsqueeze(-1).expand(4, 6), mask)


def test_cispo_by_hand_every_token_keeps_its_gradient():
    logp, old, mask, adv = tensors()
    loss, stats = CISPOLoss(kl=KLConfig(coef=0.0))(logp, old, None, adv, mask)
    value, grad = 0.0, [[0.0] * 3 for _ in range(2)]
    for i in range(2):
        toks = [t for t in range(3) if MASK[i][t]]
        for t in toks:
            w = min(math.exp(LOGP[i][t] - OLD[i][t]), 5.0)
            value += -w * ADV[i] * LOGP[i][t] / len(toks) / 2
            grad[i][t] = -w * ADV[i] / len(toks) / 2
    check(loss, logp, value, grad)
    assert all(grad[i][t] != 0.0 for i, t in tokens())   # where PPO's clip would zero (0,0) and (1,1)
    assert grad[1][1] == pytest.approx(-5.0 * -2.0 / 2 / 2)  # weight capped at 5
    assert stats["clip_frac"] == pytest.approx(1 / 5)


def test_cispo_defaults_follow_minimind3_and_population_std():
    c = CISPOLoss()
    assert (c.ratio_max, c.ratio_min, c.kl.coef, c.kl.kind, c.agg_mode, c.adv_eps) == \
        (5.0, None, 0.1, "k3", "seq-mean-token-mean", 1e-4)
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    uid = torch.tensor([7, 7, 7, 7, 3, 3])
    a = population_group_advantages(r, uid)
    # group 7: mean 0.5, population std 0.5 (sample std would be 0.577)
    assert torch.allclose(a, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0]) / (0.5 + 1e-4))
    logp, old, mask, adv = tensors()
    with pytest.raises(ValueError, match="ref_logp is None"):
        c(logp, old, None, adv, mask)
    ref = torch.tensor(OLD, dtype=torch.float64)
    loss, stats = c(logp, old, ref, adv, mask)
    no_kl, _ = CISPOLoss(kl=KLConfig(coef=0.0))(logp, old, ref, adv, mask)
    d = ref - logp.detach()
    k3 = ((torch.exp(d) - d - 1) * mask).sum(-1) / mask.sum(-1)
    assert loss.item() == pytest.approx(no_kl.item() + 0.1 * k3.mean().item(), abs=1e-12)


# ------------------------------------------------------------------ closed-form gradients in θ

def _closed_form_coef(name, A, ratio, mask, Lmax):
    """c_it such that the paper's gradient is ∇L = −Σ c_it ∇log π(y_it) (inside the clip range)."""
    B = mask.shape[0]
    n_i = mask.sum(-1, keepdim=True)
    A = A.unsqueeze(-1)
    if name == "dr_grpo":
        return A * ratio * mask / (B * Lmax)
    if name == "dapo":
        return A * ratio * mask / mask.sum()
    if name == "gspo":
        s = torch.exp(((ratio.log() * mask).sum(-1, keepdim=True)) / n_i)
        return A * s * mask / n_i / B
    return A * ratio.clamp(max=5.0) * mask / n_i / B  # cispo


@pytest.mark.parametrize("name", ["dr_grpo", "dapo", "gspo", "cispo"])
def test_gradient_in_logits_equals_the_papers_closed_form(name):
    """logp = log softmax(θ)[y]; ∇_θ log π(y) = onehot(y) − softmax(θ), so the paper's gradient is
    −Σ c_it (onehot(y_it) − softmax(θ_it)) with the loss's c (see _closed_form_coef)."""
    torch.manual_seed(1)
    B, T, V, Lmax = 3, 5, 7, 6
    theta = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (B, T))
    mask = (torch.arange(T) < torch.tensor([[5], [2], [4]])).double()
    logp = torch.log_softmax(theta, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    # ratios within ±1e-4 of 1 so GSPO's 3e-4/4e-4 range clips nothing; for CISPO one token at ratio 8
    old = logp.detach() + 1e-4 * torch.rand(B, T, dtype=torch.float64) - 0.5e-4
    if name == "cispo":
        old[0, 1] = logp[0, 1].detach() - math.log(8.0)
    A = torch.tensor([1.5, -0.5, 0.7], dtype=torch.float64)
    fields = {"dr_grpo": {"max_response_len": Lmax}, "dapo": {"overlong_shaping": False},
              "cispo": {"kl": KLConfig(coef=0.0)}}
    loss, stats = make_policy_loss(name, **fields.get(name, {}))(logp, old, None, A, mask)
    loss.backward()
    assert stats["clip_frac"] == (0.0 if name != "cispo" else pytest.approx(1 / 11))
    c = _closed_form_coef(name, A, torch.exp(logp.detach() - old), mask, Lmax)
    want = -(c.unsqueeze(-1) * (torch.nn.functional.one_hot(y, V) - torch.softmax(theta.detach(), -1)))
    assert torch.allclose(theta.grad, want, atol=1e-13, rtol=0)


@pytest.mark.parametrize("name", ["dr_grpo", "dapo", "gspo", "cispo"])
def test_micro_batches_sum_to_the_full_batch(name):
    torch.manual_seed(2)
    B, T = 6, 5
    logp0 = torch.randn(B, T, dtype=torch.float64) - 1
    old = logp0 + 0.3 * torch.randn(B, T, dtype=torch.float64)
    ref = logp0 + 0.2 * torch.randn(B, T, dtype=torch.float64)
    mask = (torch.arange(T) < torch.tensor([[5], [2], [4], [1], [3], [5]])).double()
    A = torch.randn(B, dtype=torch.float64)
    fn = make_policy_loss(name, **({"kl": KLConfig(coef=0.05)} if name != "cispo" else {}))
    counts = dict(global_tokens=float(mask.sum()), global_seqs=B, max_len=T)
    full, _ = fn(logp0, old, ref, A, mask, **counts)
    parts = sum(fn(logp0[s], old[s], ref[s], A[s], mask[s], **counts)[0] for s in (slice(0, 2), slice(2, 6)))
    assert full.item() == pytest.approx(parts.item(), abs=1e-12)
    w = torch.full((B, T), 1.0, dtype=torch.float64)
    assert fn(logp0, old, ref, A, mask, weights=w, **counts)[0].item() == pytest.approx(full.item(), abs=1e-12)


def test_name_table_covers_the_cli_names_and_dynamic_sampling():
    assert list(POLICY_LOSSES) == list(get_args(PolicyLossName))
    assert isinstance(make_policy_loss("grpo"), GRPOLoss)
    assert (make_policy_loss("dapo").clip.eps_low, make_policy_loss("dapo").clip.eps_high) == (0.2, 0.28)
    assert (make_policy_loss("gspo").clip.eps_low, make_policy_loss("gspo").clip.eps_high) == (3e-4, 4e-4)
    assert make_policy_loss("dr_grpo").clip.agg_mode == "seq-mean-token-sum-norm"
    assert [n for n in POLICY_LOSSES if dynamic_sampling(make_policy_loss(n))] == ["dapo"]
    for name in POLICY_LOSSES:   # the paper defaults: KL in the loss (GRPO 0.04, CISPO 0.1) or none
        kl = make_policy_loss(name).kl
        assert kl.in_advantages is False and kl.coef == {"grpo": 0.04, "cispo": 0.1}.get(name, 0.0)
    with pytest.raises(ValueError, match="unknown policy loss 'ppo2'"):
        make_policy_loss("ppo2")
    with pytest.raises(ValueError, match="variant"):
        GSPOLoss(variant="seq")
    with pytest.raises(ValueError, match="ratio_max"):
        CISPOLoss(ratio_max=0.9)
