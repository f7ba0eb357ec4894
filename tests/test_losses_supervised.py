import math

import pytest
import torch
import torch.nn.functional as F

from learner.losses import (
    bradley_terry_loss,
    distill_loss,
    dpo_loss,
    lm_loss,
    sequence_logprob,
)


def _close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=tol)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- LM

def test_lm_loss_by_hand():
    # V=2, logits [0, ln 3] -> p = [1/4, 3/4]
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)], [5.0, 1.0]]])
    labels = torch.tensor([[1, 0, -100]])
    loss, stats = lm_loss(logits, labels)
    expect = (-math.log(0.75) - math.log(0.25)) / 2
    assert _close(loss, expect)
    assert stats["tokens"] == 2.0 and _close(stats["loss"], expect)
    assert isinstance(stats["loss"], float)


def test_lm_loss_matches_torch_and_shard_invariance():
    torch.manual_seed(0)
    logits = torch.randn(5, 6, 13)
    labels = torch.randint(0, 13, (5, 6))
    labels[0, :3] = -100
    labels[3, 2:] = -100
    full, _ = lm_loss(logits, labels)
    ref = F.cross_entropy(logits.reshape(-1, 13), labels.reshape(-1), ignore_index=-100)
    assert _close(full, ref, tol=1e-5)
    n = int((labels != -100).sum())
    parts = [lm_loss(logits[s], labels[s], global_tokens=n)[0] for s in (slice(0, 2), slice(2, 3), slice(3, 5))]
    assert _close(sum(parts), full, tol=1e-5)
    # naive per-micro-batch means do not sum (or average) to the full loss
    naive = sum(lm_loss(logits[s], labels[s])[0] for s in (slice(0, 2), slice(2, 3), slice(3, 5))) / 3
    assert not _close(naive, full, tol=1e-4)


def test_lm_loss_grad_finite_with_all_ignored_row():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.tensor([[-100, -100, -100], [1, 2, 3]])
    loss, _ = lm_loss(logits, labels)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[0] == 0)


# ----------------------------------------------------------------------------- DPO

def test_sequence_logprob():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    m = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert _close(sequence_logprob(lp, m), [-3.0, -1.5])


def test_dpo_by_hand():
    pc = torch.tensor([-10.0, -8.0])
    pr = torch.tensor([-12.0, -7.0])
    rc = torch.tensor([-11.0, -8.0])
    rr = torch.tensor([-11.0, -8.0])
    # h = 0.1 * ((pc - pr) - (rc - rr)) = 0.1 * [2, -1] = [0.2, -0.1]
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=0.1)
    expect = (-math.log(_sig(0.2)) - math.log(_sig(-0.1))) / 2
    assert _close(loss, expect)
    # chosen rewards 0.1*[1, 0], rejected 0.1*[-1, 1]
    assert _close(stats["chosen_reward"], 0.05)
    assert _close(stats["rejected_reward"], 0.0)
    assert _close(stats["reward_margin"], 0.05)
    assert stats["reward_accuracy"] == 0.5
    # label smoothing (conservative DPO)
    ls = 0.1
    loss_ls, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=ls)
    e = [-(1 - ls) * math.log(_sig(h)) - ls * math.log(_sig(-h)) for h in (0.2, -0.1)]
    assert _close(loss_ls, sum(e) / 2)


def test_dpo_at_reference_is_log2_and_gradient_direction():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    loss, _ = dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)
    assert _close(loss, math.log(2))
    loss.backward()
    assert _close(pc.grad, [-0.05]) and _close(pr.grad, [0.05])  # -β σ(-h) = -0.1*0.5
    with pytest.raises(ValueError):
        dpo_loss(pc, pr, pc, pr, label_smoothing=0.6)


# ----------------------------------------------------------------------------- RM

def test_bradley_terry_by_hand():
    c = torch.tensor([2.0, 0.0, 1.0], requires_grad=True)
    r = torch.tensor([1.0, 1.0, 1.0])
    loss, stats = bradley_terry_loss(c, r)
    expect = -(math.log(_sig(1.0)) + math.log(_sig(-1.0)) + math.log(_sig(0.0))) / 3
    assert _close(loss, expect)
    assert _close(stats["accuracy"], 1 / 3)
    assert _close(stats["margin"], 0.0)
    loss.backward()
    assert torch.isfinite(c.grad).all()
    assert _close(c.grad, [-(1 - _sig(d)) / 3 for d in (1.0, -1.0, 0.0)])
    loss_m, _ = bradley_terry_loss(c.detach(), r, margin=0.5)
    assert _close(loss_m, -(math.log(_sig(0.5)) + math.log(_sig(-1.5)) + math.log(_sig(-0.5))) / 3)


# ----------------------------------------------------------------------------- distill

def _manual_kl(s, t, T):
    p = torch.softmax(t / T, -1)
    return (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1)


def test_distill_by_hand_and_kl_div_cross_check():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 7, requires_grad=True)
    t = torch.randn(2, 4, 7)
    labels = torch.randint(0, 7, (2, 4))
    labels[1, 1:] = -100
    alpha, T = 0.3, 2.0
    loss, stats = distill_loss(s, t, labels, alpha=alpha, temperature=T)

    valid = labels != -100
    ce = F.cross_entropy(s[valid], labels[valid])
    kl_manual = _manual_kl(s.detach(), t, T)[valid].mean()
    kl_torch = F.kl_div(torch.log_softmax(s.detach()[valid] / T, -1), torch.log_softmax(t[valid] / T, -1),
                        log_target=True, reduction="batchmean")
    assert _close(kl_manual, kl_torch, tol=1e-5)
    assert _close(stats["kl"], kl_torch, tol=1e-5)
    assert _close(stats["ce"], ce.detach(), tol=1e-5)
    assert _close(loss, alpha * ce + (1 - alpha) * T * T * kl_torch, tol=1e-5)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    assert torch.all(s.grad[1, 1:] == 0)  # ignored tokens get no gradient


def test_distill_limits_and_shard_invariance():
    torch.manual_seed(1)
    s = torch.randn(3, 5, 6)
    t = torch.randn(3, 5, 6)
    labels = torch.randint(0, 6, (3, 5))
    labels[2, 3:] = -100
    ce_only, _ = distill_loss(s, t, labels, alpha=1.0)
    assert _close(ce_only, lm_loss(s, labels)[0], tol=1e-6)
    same, st = distill_loss(t, t, labels, alpha=0.0)
    assert abs(st["kl"]) < 1e-6 and abs(float(same)) < 1e-5
    full, _ = distill_loss(s, t, labels)
    n = int((labels != -100).sum())
    parts = distill_loss(s[:1], t[:1], labels[:1], global_tokens=n)[0] + \
        distill_loss(s[1:], t[1:], labels[1:], global_tokens=n)[0]
    assert _close(parts, full, tol=1e-5)
