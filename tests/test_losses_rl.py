import json
import math

import pytest
import torch

from learner.losses import (
    ClipConfig,
    GRPOLoss,
    KLConfig,
    PPOLoss,
    SPOTracker,
    gae,
    global_counts,
    group_advantages,
    kl_penalized_rewards,
    kl_reward_penalty,
    policy_loss,
    policy_drift,
    ppo_token_rewards,
    spo_advantages,
    value_loss,
    zero_variance_groups,
)

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- GRPO advantages

UID = torch.tensor([7, 3, 7, 3, 7, 3])            # two groups of 3, interleaved
R = torch.tensor([1.0, 0.5, 0.0, 0.5, 1.0, 0.5])  # group 3 has zero variance


def test_group_advantages_group_scale_by_hand():
    a = group_advantages(R, UID, "group")
    std7 = math.sqrt(1 / 3)  # unbiased: devs 1/3, -2/3, 1/3 -> (1/9+4/9+1/9)/2
    expect = [(1 / 3) / (std7 + 1e-6), 0, (-2 / 3) / (std7 + 1e-6), 0, (1 / 3) / (std7 + 1e-6), 0]
    assert _close(a, expect)
    assert torch.all(a[UID == 3] == 0)


def test_group_advantages_batch_and_none_by_hand():
    dev = [1 / 3, 0, -2 / 3, 0, 1 / 3, 0]
    assert _close(group_advantages(R, UID, "none"), dev)
    bstd = math.sqrt(17 / 120)  # unbiased std of R: mean 7/12, Σdev² = 102/144, /5
    assert _close(group_advantages(R, UID, "batch"), [d / (bstd + 1e-6) for d in dev])


def test_group_advantages_permutation_equivariant_and_unknown_scale():
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    for scale in ("group", "batch", "none"):
        assert _close(group_advantages(R[perm], UID[perm], scale), group_advantages(R, UID, scale)[perm])
    with pytest.raises(ValueError, match="none"):
        group_advantages(R, UID, "std")


def test_group_of_one_is_zero():
    a = group_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 1, 1]), "group")
    assert _close(a, [0.0, -0.5 / (math.sqrt(0.5) + 1e-6), 0.5 / (math.sqrt(0.5) + 1e-6)])


def test_zero_variance_groups():
    zv = zero_variance_groups(R, UID)
    assert zv.tolist() == [False, True, False, True, False, True]
    assert zero_variance_groups(torch.tensor([1, 1, 0, 1]), torch.tensor([5, 5, 9, 9])).tolist() == \
        [True, True, False, False]


# ----------------------------------------------------------------------------- policy loss

def test_policy_loss_ratio_one_is_minus_mean_advantage():
    logp = torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    adv = torch.tensor([0.5, -1.0, 2.0])
    loss, st = policy_loss(logp, logp.clone(), adv, mask)
    expect = -(0.5 * 3 - 1.0 * 2 + 2.0 * 4) / 9
    assert _close(loss, expect)
    assert st["clip_frac"] == 0.0 and _close(st["ratio_mean"], 1.0) and _close(st["approx_kl"], 0.0)


def _ratio_case():
    # eps_low = 0.1, eps_high = 0.3 -> ratio clipped to [0.9, 1.3]
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.2, 1.25, 1.5, 9.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]], dtype=torch.float32)
    old = torch.full_like(ratios, -2.0)
    logp = (old + ratios.log()).requires_grad_(True)
    return logp, old, adv, mask


def test_policy_loss_asymmetric_clip_by_hand():
    logp, old, adv, mask = _ratio_case()
    loss, st = policy_loss(logp, old, adv, mask, eps_low=0.1, eps_high=0.3)
    # per token: -1.3 (high clip), -0.5, +0.9 (low clip), +1.2, -2.5, +1.5; masked token ignored
    per_tok = [-1.3, -0.5, 0.9, 1.2, -2.5, 1.5]
    assert _close(loss, sum(per_tok) / 6, tol=1e-6)
    assert _close(st["clip_frac"], 2 / 6)
    assert _close(st["ratio_max"], 1.5, tol=1e-6)  # the masked ratio 9 is excluded
    loss.backward()
    g = logp.grad[0]
    # clipped tokens (0, 2) and the masked token get zero gradient; others -A·ratio/N
    assert g[0] == 0 and g[2] == 0 and g[6] == 0
    assert _close(g[[1, 3, 4, 5]], torch.tensor([-0.5, 1.2, -2.5, 1.5]) / 6, tol=1e-6)


def test_policy_loss_symmetric_clip_differs():
    logp, old, adv, mask = _ratio_case()
    loss, st = policy_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.2)
    # [0.8, 1.2]: -1.2 (clip), -0.5, +0.8 (clip), +1.2, -2*1.2=-2.4 (clip), +1.5
    assert _close(loss, (-1.2 - 0.5 + 0.8 + 1.2 - 2.4 + 1.5) / 6, tol=1e-6)
    assert _close(st["clip_frac"], 3 / 6)


def test_policy_loss_dual_clip():
    ratios = torch.tensor([[5.0, 2.0, 5.0]])
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3)
    old = torch.zeros(1, 3)
    logp = ratios.log().requires_grad_(True)
    base, _ = policy_loss(logp, old, adv, mask)
    assert _close(base, (5.0 + 2.0 - 1.2) / 3, tol=1e-6)
    loss, st = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    assert _close(loss, (3.0 + 2.0 - 1.2) / 3, tol=1e-6)
    assert _close(st["dual_clip_frac"], 1 / 3)
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 2] == 0 and _close(logp.grad[0, 1], 2.0 / 3, tol=1e-6)
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, dual_clip=0.5)


@pytest.mark.parametrize("mode", MODES)
def test_policy_loss_shard_invariance(mode):
    torch.manual_seed(3)
    B, T = 6, 5
    old = -torch.rand(B, T) * 3
    logp = old + 0.4 * torch.randn(B, T)
    adv = torch.randn(B)
    mask = (torch.rand(B, T) > 0.3).float()
    full, _ = policy_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28, dual_clip=3.0, agg_mode=mode)
    g = global_counts(mask)
    parts = sum(policy_loss(logp[s], old[s], adv[s], mask[s], eps_low=0.2, eps_high=0.28, dual_clip=3.0,
                            agg_mode=mode, **g)[0] for s in (slice(0, 1), slice(1, 4), slice(4, 6)))
    assert _close(parts, full, tol=1e-6)


# ----------------------------------------------------------------------------- GRPOLoss

def test_grpo_loss_kl_in_loss_by_hand():
    torch.manual_seed(4)
    old = -torch.rand(2, 3)
    logp = (old + 0.1 * torch.randn(2, 3)).requires_grad_(True)
    ref = -torch.rand(2, 3)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    cfg = GRPOLoss(clip=ClipConfig(eps_high=0.28), kl=KLConfig(coef=0.1, kind="k3"))
    loss, st = cfg(logp, old, ref, adv, mask)
    pg, _ = policy_loss(logp, old, adv, mask, 0.2, 0.28)
    d = ref - logp
    k3 = torch.exp(d) - d - 1
    assert _close(loss, pg + 0.1 * (k3 * mask).sum() / 5, tol=1e-6)
    assert _close(st["kl"], (k3 * mask).sum() / 5, tol=1e-6)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    with pytest.raises(ValueError):
        cfg(logp, old, None, adv, mask)
    with pytest.raises(ValueError, match="k3"):
        KLConfig(kind="k5")


@pytest.mark.parametrize("mode", MODES)
def test_grpo_loss_shard_invariance(mode):
    torch.manual_seed(5)
    B, T = 4, 6
    old = -torch.rand(B, T) * 2
    logp = old + 0.3 * torch.randn(B, T)
    ref = old + 0.2 * torch.randn(B, T)
    mask = (torch.rand(B, T) > 0.2).float()
    adv = torch.randn(B)
    cfg = GRPOLoss(clip=ClipConfig(agg_mode=mode), kl=KLConfig(coef=0.05))
    full, _ = cfg(logp, old, ref, adv, mask)
    g = global_counts(mask)
    parts = cfg(logp[:3], old[:3], ref[:3], adv[:3], mask[:3], **g)[0] + \
        cfg(logp[3:], old[3:], ref[3:], adv[3:], mask[3:], **g)[0]
    assert _close(parts, full, tol=1e-6)


def test_grpo_kl_in_reward():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-0.5, -1.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float32)
    pen = kl_reward_penalty(old, ref, mask, beta=0.1)
    # k1 = logp - ref: [0.5, -1, 0], [0, 1, (masked)]
    assert _close(pen, [[-0.05, 0.1, 0.0], [0.0, -0.1, 0.0]])
    r = torch.tensor([1.0, 1.0])
    assert _close(kl_penalized_rewards(r, old, ref, mask, 0.1), [1.05, 0.9])
    cfg = GRPOLoss(kl=KLConfig(coef=0.1, in_reward=True))
    adv = cfg.compute_advantages(r, torch.tensor([0, 0]), old, ref, mask)
    assert _close(adv, group_advantages(torch.tensor([1.05, 0.9]), torch.tensor([0, 0])))
    assert adv[0] > 0 > adv[1]
    # no KL term in the loss: equals the bare policy loss
    logp = old + 0.1
    loss, _ = cfg(logp, old, ref, adv, mask)
    assert _close(loss, policy_loss(logp, old, adv, mask)[0])


# ----------------------------------------------------------------------------- PPO

def _gae_reference(r, v, m, gamma, lam):
    """Per-element recursion over the valid tokens of each row only."""
    B, T = len(r), len(r[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        idx = [t for t in range(T) if m[b][t]]
        nxt_v, nxt_a = 0.0, 0.0
        for t in reversed(idx):
            delta = r[b][t] + gamma * nxt_v - v[b][t]
            a = delta + gamma * lam * nxt_a
            adv[b][t] = a
            nxt_v, nxt_a = v[b][t], a
    return adv


def test_gae_by_hand_with_padding():
    r = torch.tensor([[0.0, 0.0, 1.0, 100.0], [0.0, 1.0, 55.0, -7.0]])
    v = torch.tensor([[0.2, 0.4, 0.6, 50.0], [0.5, 0.2, 40.0, 30.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    adv, ret = gae(r, v, m, gamma=1.0, lam=0.95)
    # row 1 by hand: A1 = 1 + 0 - 0.2 = 0.8 ; A0 = (0 + 0.2 - 0.5) + 0.95*0.8 = 0.46
    assert _close(adv[1], [0.46, 0.8, 0.0, 0.0])
    assert _close(ret[1], [0.96, 1.0, 0.0, 0.0])
    # row 0 by hand: A2 = 1 - 0.6 = 0.4 ; A1 = 0.6-0.4 + 0.95*0.4 = 0.58 ; A0 = 0.4-0.2 + 0.95*0.58
    assert _close(adv[0], [0.2 + 0.95 * 0.58, 0.58, 0.4, 0.0])
    assert _close(ret, (adv + v) * m)
    # padding garbage does not leak: changing it leaves the result unchanged
    r2, v2 = r.clone(), v.clone()
    r2[m == 0] = -1e3
    v2[m == 0] = 1e3
    adv2, _ = gae(r2, v2, m)
    assert _close(adv2, adv)


def test_gae_matches_reference_recursion_with_holes():
    torch.manual_seed(6)
    r = torch.randn(2, 4)
    v = torch.randn(2, 4)
    m = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.float32)  # left pad / hole
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.8)
    ref = _gae_reference(r.tolist(), v.tolist(), m.tolist(), 0.9, 0.8)
    assert _close(adv, ref, tol=1e-6)
    assert _close(ret, (adv + v) * m, tol=1e-6)


def test_ppo_token_rewards():
    old = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0, 0.0], [-2.0, -1.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    rw = ppo_token_rewards(torch.tensor([1.0, -2.0]), old, ref, m, kl_coef=0.1)
    # k1 row0: [0.5, 0, -1], row1: [1, 0]
    assert _close(rw, [[-0.05, 0.0, 0.1 + 1.0, 0.0], [-0.1, -2.0, 0.0, 0.0]])


def test_value_loss_clipping_by_hand():
    old = torch.tensor([[1.0, 1.0, 1.0]])
    val = torch.tensor([[1.5, 1.5, 1.1]], requires_grad=True)
    ret = torch.tensor([[2.0, 1.0, 0.0]])
    m = torch.ones(1, 3)
    loss, st = value_loss(val, old, ret, m, clip_range=0.2)
    # tok0: max(0.25, (1.2-2)^2=0.64) -> clipped ; tok1: max(0.25, 0.04) ; tok2: within range, 1.21
    assert _close(loss, 0.5 * (0.64 + 0.25 + 1.21) / 3, tol=1e-6)
    assert _close(st["vf_clip_frac"], 1 / 3)
    loss.backward()
    assert val.grad[0, 0] == 0  # clipped term is constant in V
    assert _close(val.grad[0, 1:], [0.5 / 3, 1.1 / 3], tol=1e-6)
    unclipped, _ = value_loss(val, old, ret, m, clip_range=None)
    assert _close(unclipped, 0.5 * (0.25 + 0.25 + 1.21) / 3, tol=1e-6)


def test_ppo_loss_end_to_end():
    torch.manual_seed(7)
    B, T = 4, 5
    m = torch.ones(B, T)
    m[1, 3:] = 0
    m[3, 1:] = 0
    old = -torch.rand(B, T)
    ref = old + 0.1 * torch.randn(B, T)
    vals = torch.randn(B, T)
    cfg = PPOLoss(kl=KLConfig(coef=0.05, kind="k1", in_reward=True), vf_coef=0.5)
    adv, ret = cfg.compute_advantages(torch.tensor([1.0, 0.0, 1.0, 0.5]), old, ref, vals, m)
    a = adv[m.bool()]
    assert _close(a.mean(), 0.0, tol=1e-5) and _close(a.std(), 1.0, tol=1e-4)
    raw, raw_ret = gae(ppo_token_rewards(torch.tensor([1.0, 0.0, 1.0, 0.5]), old, ref, m, 0.05), vals, m)
    assert _close(ret, raw_ret)
    logp = (old + 0.05 * torch.randn(B, T)).requires_grad_(True)
    v_new = (vals + 0.1 * torch.randn(B, T)).requires_grad_(True)
    loss, st = cfg(logp, old, v_new, vals, adv, ret, m)
    pg, _ = policy_loss(logp, old, adv, m)
    vf, _ = value_loss(v_new, vals, ret, m, 0.2)
    assert _close(loss, pg + 0.5 * vf, tol=1e-6)
    assert {"pg_loss", "vf_loss", "clip_frac", "approx_kl", "loss"} <= set(st)
    loss.backward()
    assert torch.isfinite(logp.grad).all() and torch.isfinite(v_new.grad).all()
    g = global_counts(m)
    parts = cfg(logp[:2], old[:2], v_new[:2], vals[:2], adv[:2], ret[:2], m[:2], **g)[0] + \
        cfg(logp[2:], old[2:], v_new[2:], vals[2:], adv[2:], ret[2:], m[2:], **g)[0]
    assert _close(parts, loss, tol=1e-6)


# ----------------------------------------------------------------------------- SPO

def test_spo_rho_clipping():
    tr = SPOTracker()
    assert _close(tr.rho(0.0), 0.96)            # 2^0 = 1 -> rho_max
    assert _close(tr.rho(0.06), 0.875)          # 2^-1 = 0.5 -> rho_min
    assert _close(tr.rho(0.01), 2 ** (-1 / 6))  # 0.8909, inside the range


def test_spo_updates_by_hand():
    tr = SPOTracker()
    tr.init_from_samples("p", [1, 0, 1, 1], n0=8)
    assert _close(tr.params("p"), (6.0, 2.0))
    v0 = tr.baseline(["p"])
    assert _close(v0, [0.75])
    # update 1: drift 0.06 -> rho = clip(0.5) = 0.875, reward 1
    tr.update(["p"], torch.tensor([1.0]), torch.tensor([0.06]))
    assert _close(tr.params("p"), (0.875 * 6 + 1, 0.875 * 2))
    # update 2: drift 0.01 -> rho = 2^(-1/6), reward 0
    rho = 2 ** (-1 / 6)
    tr.update(["p"], torch.tensor([0.0]), torch.tensor([0.01]))
    a, b = (0.875 * 6 + 1) * rho, 0.875 * 2 * rho + 1
    assert _close(tr.params("p"), (a, b), tol=1e-6)
    assert _close(tr.baseline(["p"]), [a / (a + b)], tol=1e-6)
    # no drift -> rho_max; an unseen key starts from the prior (1, 1)
    tr.update(["q"], [1.0])
    assert _close(tr.params("q"), (0.96 + 1, 0.96))
    with pytest.raises(ValueError):
        tr.update(["q"], [1.5])


def test_spo_default_n0_and_baseline_before_update():
    tr = SPOTracker()
    assert _close(tr.n0, 8.0)  # 1 / (1 - rho_min)
    tr.init_from_samples("a", [0.0, 1.0])
    assert _close(tr.params("a"), (4.0, 4.0))
    keys = ["a", "b"]
    rewards = torch.tensor([1.0, 0.0])
    v = tr.baseline(keys)                  # read before the update ...
    tr.update(keys, rewards)
    assert _close(v, [0.5, 0.5])           # ... so it is not contaminated by this batch's reward
    assert tr.baseline(keys)[0] > 0.5 and tr.baseline(keys)[1] < 0.5


def test_spo_sampling_weights_and_advantages():
    tr = SPOTracker()
    tr.init_from_samples("hard", [0.0], n0=4)
    tr.init_from_samples("mid", [1.0, 0.0], n0=4)
    tr.init_from_samples("easy", [1, 1, 1, 0], n0=4)
    w = tr.sampling_weights(["hard", "mid", "easy", "new"])
    assert _close(w, [0.05, 0.5 + 0.05, math.sqrt(0.75 * 0.25) + 0.05, 0.55])
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    v = tr.baseline(["hard", "mid", "easy", "new"])
    a = spo_advantages(r, v)
    raw = torch.tensor([1.0, -0.5, 0.25, 0.5])
    assert _close(a, (raw - raw.mean()) / (raw.std() + 1e-6), tol=1e-6)
    assert _close(a.mean(), 0.0) and _close(a.std(), 1.0, tol=1e-5)
    assert _close(spo_advantages(torch.tensor([1.0]), torch.tensor([0.3])), [0.0])


def test_spo_policy_drift_and_state_dict_round_trip():
    now = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, 0.0]])
    then = torch.tensor([[-1.1, -2.0, -2.0], [-0.5, -0.5, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.float32)
    assert _close(policy_drift(now, then, mask), [0.05, 0.1], tol=1e-6)     # mean |Δ| over each row's tokens
    assert _close(policy_drift(now, now, mask), [0.0, 0.0])
    tr = SPOTracker(rho_min=0.9)
    assert tr.remembered("a") is None
    tr.remember("a", [5, 6], [7, 8, 2], [-0.1, -0.2, -0.3])
    tr.update(["a", 3], [1.0, 0.0], [0.05, 0.0])
    tr.init_from_samples("z", [1.0, 1.0, 0.0])
    state = json.loads(json.dumps(tr.state_dict()))  # JSON-able
    tr2 = SPOTracker()
    tr2.load_state_dict(state)
    assert tr2.rho_min == 0.9 and tr2.state_dict() == tr.state_dict()
    keys = ["a", 3, "z", "new"]
    assert _close(tr2.baseline(keys), tr.baseline(keys))
    assert tr2.remembered("a") == ([5, 6], [7, 8, 2], [-0.1, -0.2, -0.3])   # the stored response survived
    # the int key 3 and the str key "3" are the same prompt
    assert _close(tr2.params("3"), tr.params(3))

@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value", [1.05, 0.1, -0.3, 1 / 3])
def test_zero_variance_groups_get_exactly_zero_advantage(scale, value):
    """An all-equal group's float32 mean can be one rounding unit off its members (1.05 x 8 gave
    -0.1057 per row once divided by std ~ 0 + eps): such groups carry no signal and get exactly 0."""
    r = torch.cat([torch.full((8,), value), torch.tensor([0.0, 1.0, 0.0, 1.0])])
    uid = torch.tensor([0] * 8 + [1] * 4)
    adv = group_advantages(r, uid, scale)
    assert torch.equal(adv[:8], torch.zeros(8))
    assert (adv[8:] != 0).all()


def test_value_clip_fraction_counts_no_rounding_as_clipping():
    """V inside [old - c, old + c] must not count as clipped, even where old + (V - old) != V in
    float32 (the clamp is on V itself)."""
    torch.manual_seed(0)
    old = torch.rand(64, 16) * 0.19                       # values near 0, old up to 0.19 away: within
    values = torch.randn(64, 16) * 1e-6                   # c = 0.2, but V - old is inexact in float32
    returns = values + torch.randn(64, 16) * 1e-9
    _, st = value_loss(values, old, returns, torch.ones(64, 16), clip_range=0.2)
    assert st["vf_clip_frac"] == 0.0
    _, st = value_loss(old + 0.5, old, old + 5.0, torch.ones(64, 16), clip_range=0.2)
    assert st["vf_clip_frac"] == 1.0        # every value outside the range, clipped term larger
