"""RL stages through the Learner (no Ray): recomputed old logprobs equal the rollout's, several
updates per batch move the ratio, micro-batching is exact (GRPO + KL, PPO + critic), zero-variance
filtering with refill, PPO, SPO's tracker (baseline before update, drift of the rescored previous
response -> rho, checkpointed), and
a short GRPO run that measurably learns a trivial reward. CPU, fp32, "tiny" preset, vocab 64."""
from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from contract.batch import RolloutBatch
from learner.learner import Learner
from learner.losses import GRPOLoss, KLConfig, PPOLoss, SPOTracker
from learner.stages import GRPOStage, PPOStage, RLUpdateConfig, SPOStage, ZeroVarianceFilter, response_logprobs
from minimind.model import MiniMindScoreModel
from rl_helpers import changed, mixed_rewards, optim, p_target, perturbed, rollout, tiny_model, tiny_prompts, weights



pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- old logprobs
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_learner_recomputes_the_rollout_logprobs(temperature):
    model = tiny_model()
    batch = rollout(model, tiny_prompts(4), G=3, temperature=temperature, max_new_tokens=10, seed=1,
                    rewards=torch.rand(12))
    stage = GRPOStage()
    learner = Learner(copy.deepcopy(model), stage, optim(), ref_model=copy.deepcopy(model))
    exp, stats = stage.experience(learner, batch)
    assert stats["logprob_gap"] < 1e-5 and exp.temperature == temperature   # scored at the batch's temperature
    assert torch.equal(exp.old_logp, response_logprobs(learner.model, exp.seq, exp.attn, exp.response_len,
                                                       temperature))
    # the check has teeth: a batch claiming another temperature than it was sampled at is far off
    wrong = replace(batch, temperature=1.3 if temperature == 1.0 else 1.0)
    assert stage.experience(learner, wrong)[1]["logprob_gap"] > 1e-2
    with pytest.raises(ValueError, match="temperature"):
        stage.experience(learner, replace(batch, temperature=0.0))


def test_rows_sharing_a_prompt_run_it_once_and_score_as_alone():
    """The G samples of a prompt: the prompt goes through the trunk once (3 prompts, not 12 rows), and
    every row's logprobs and their gradient are those of the row scored on its own."""
    model = tiny_model()
    batch = rollout(model, tiny_prompts(3), G=4, temperature=0.8, max_new_tokens=10, seed=6)
    seq, attn, mask, R = batch.sequences, batch.attention_mask, batch.response_mask.clone(), batch.response_ids.shape[1]
    rows_seen = []
    model.model.register_forward_hook(lambda _m, args, _out: rows_seen.append(args[0].shape[0]))
    together = response_logprobs(model, seq, attn, R, 0.8)
    assert rows_seen == [3, 12]                      # the distinct prompts, then every row's response
    (together * mask).sum().backward()
    g_together = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    alone = torch.cat([response_logprobs(model, seq[i:i + 1], attn[i:i + 1], R, 0.8) for i in range(len(seq))])
    (alone * mask).sum().backward()
    torch.testing.assert_close(together * mask, alone * mask, rtol=0, atol=1e-5)
    assert ((together - batch.logprobs).abs() * mask).max() < 1e-5      # and the engine's logprobs
    for a, b in zip(g_together, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _plain_logprobs(model, seq, attn, R, temperature):
    """The straightforward computation: one padded forward over whole sequences, every position."""
    logits = model(seq, attention_mask=attn).logits[:, -R - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, seq[:, -R:, None]).squeeze(-1)


@pytest.mark.parametrize("holes", [False, True])
def test_packed_scoring_equals_one_padded_forward(holes):
    """Responses of different lengths (right padding) or with unattended tokens inside (holes): the
    packed passes give the logprobs and gradient of one plain padded forward on every real token, 0 on
    the rest, and the position-wise layers see only the tokens some wanted position needs."""
    model = tiny_model()
    batch = rollout(model, tiny_prompts(4), G=3, temperature=0.9, max_new_tokens=10, seed=3)
    seq, attn, R = batch.sequences, batch.attention_mask.clone(), batch.response_ids.shape[1]
    P = seq.shape[1] - R
    attn[1, -R + 2:] = 0                       # a row cut to 2 tokens and one to a single token
    attn[5, -R + 1:] = 0
    if holes:
        attn[2, -R + 1] = 0                    # an unattended token inside a response
    real = attn[:, P:].bool()
    assert len(set(real.sum(1).tolist())) > 2
    rows_seen = []
    model.model.layers[0].mlp.register_forward_hook(lambda _m, args, _out: rows_seen.append(args[0].shape[0]))
    packed = response_logprobs(model, seq, attn, R, 0.9)
    prompt_tokens = int(batch.prompt_mask[::3].sum())          # the 4 distinct prompts' real tokens
    resp_fed = sum(int(r.nonzero().max()) for r in real)       # each row's positions before its last real token
    assert rows_seen == [prompt_tokens, resp_fed] and resp_fed < int(real.sum()) < real.numel()
    (packed * real).sum().backward()
    g_packed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain = _plain_logprobs(model, seq, attn, R, 0.9)
    (plain * real).sum().backward()
    torch.testing.assert_close(packed[real], plain[real], rtol=0, atol=1e-5)
    assert not packed[~real].any()
    for a, b in zip(g_packed, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _count_forwards(module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_one_on_policy_update_takes_old_logprobs_from_its_own_forward():
    """epochs x minibatches == 1: the old policy IS the one being updated, so the learner skips the
    separate no-grad forward; the same update as with the engine's logprobs as the old ones."""
    model = tiny_model()
    G = 4
    batch = rollout(model, tiny_prompts(4), G=G, max_new_tokens=10, seed=4, rewards=mixed_rewards(16, G))
    results = []
    for use_rollout in (False, True):
        stage = GRPOStage(loss_fn=GRPOLoss(kl=KLConfig(coef=0.1)),
                          update=RLUpdateConfig(use_rollout_logprobs=use_rollout))
        learner = Learner(copy.deepcopy(model), stage, optim(1e-3, micro_batch_size=8),
                          ref_model=perturbed(model))
        forwards = _count_forwards(learner.model.lm_head)   # one LM-head pass per scoring of a micro-batch
        stats = learner.train_step(batch)
        results.append((forwards[0], stats, weights(learner.model)))
    (f_own, s_own, w_own), (f_engine, s_engine, w_engine) = results
    assert f_own == f_engine == 2                     # 2 micro-batches, no separate forward for old
    assert s_own["updates"] == 1 and s_own["logprob_gap"] < 1e-5
    assert s_own["ratio_mean"] == 1.0 and s_own["clip_frac"] == 0.0
    assert s_own["loss"] == pytest.approx(s_engine["loss"], rel=1e-4, abs=1e-6)
    for k in w_own:  # the two olds differ by float rounding (< 1e-5): a 1e-3 Adam step apart would show
        torch.testing.assert_close(w_own[k], w_engine[k], rtol=0, atol=1e-5)
    assert changed(weights(model), learner.model)


def test_stale_batch_trains_against_the_behaviour_logprobs_without_a_recompute():
    model = tiny_model()
    batch = rollout(model, tiny_prompts(3), G=2, seed=5, rewards=torch.rand(6))   # sampled with version 0
    stage = GRPOStage(update=RLUpdateConfig(minibatches=2))
    learner = Learner(perturbed(model), stage, optim(), ref_model=copy.deepcopy(model))
    learner.publish(1)                       # the learner has moved on: version 1 is what rollouts now get
    assert learner.is_stale(batch)
    forwards = _count_forwards(learner.model.model)
    exp, stats = stage.experience(learner, batch)
    assert forwards[0] == 0 and "logprob_gap" not in stats
    assert torch.equal(exp.old_logp, batch.logprobs)


def test_stale_flag_survives_zero_variance_filtering():
    """Off-policy + filtering: the kept groups of a stale batch are concatenated for the update and
    must still train against the behaviour policy (the flag used to be lost in the concat)."""
    model = tiny_model()
    stale = replace(_grouped_batch(model, [True, False], uid_base=0, seed=12), policy_version=0)
    fresh = replace(_grouped_batch(model, [True, True], uid_base=100, seed=13), policy_version=1)
    merged = RolloutBatch.concat([stale.select(torch.arange(4)), fresh])
    assert merged.policy_version == 0 and merged.temperature == 1.0
    stage = GRPOStage(filter=ZeroVarianceFilter(target_groups=3))
    learner = Learner(perturbed(model), stage, optim(), ref_model=copy.deepcopy(model))
    learner.publish(1)
    assert learner.is_stale(merged) and not learner.is_stale(fresh)
    assert learner.train_step(stale)["need_more"] == 1.0       # 1 informative group of the 3 wanted
    s = learner.train_step(fresh)
    assert s["updates"] == 1 and s["rows"] == 12.0
    assert "logprob_gap" not in s     # old = the rollout's logprobs, nothing recomputed or compared


# ----------------------------------------------------------------------------- several updates
def test_several_updates_per_batch_move_the_ratio():
    model = tiny_model()
    G = 4
    batch = rollout(model, tiny_prompts(4), G=G, seed=2, rewards=mixed_rewards(16, G))
    one = Learner(copy.deepcopy(model), GRPOStage(), optim(1e-3), ref_model=copy.deepcopy(model))
    s1 = one.train_step(batch)
    assert s1["updates"] == 1 and s1["ratio_mean"] == 1.0 and s1["approx_kl"] == 0.0
    learner = Learner(copy.deepcopy(model), GRPOStage(update=RLUpdateConfig(epochs=2, minibatches=2)),
                      optim(1e-3), ref_model=copy.deepcopy(model))
    s4 = learner.train_step(batch)
    assert s4["updates"] == 4 and learner.step == 4
    assert abs(s4["ratio_mean"] - 1.0) > 1e-5 and s4["approx_kl"] > 0   # later updates: the policy moved


def test_lr_zero_leaves_policy_and_ratio_unchanged():
    model = tiny_model()
    G = 4
    batch = rollout(model, tiny_prompts(4), G=G, seed=2, rewards=mixed_rewards(16, G))
    cfg = optim(1e-3)
    cfg.lr = 0.0   # OptimConfig refuses lr=0 at construction; this is a sanity check only
    learner = Learner(copy.deepcopy(model), GRPOStage(update=RLUpdateConfig(epochs=2, minibatches=2)), cfg,
                      ref_model=copy.deepcopy(model))
    before = weights(learner.model)
    stats = learner.train_step(batch)
    assert stats["updates"] == 4
    assert not changed(before, learner.model)
    assert abs(stats["ratio_mean"] - 1.0) < 1e-6 and stats["clip_frac"] == 0.0


# ----------------------------------------------------------------------------- micro-batching
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_micro_batching_gives_the_same_gradient(algo):
    model = tiny_model()
    G = 4
    batch = rollout(model, tiny_prompts(4), G=G, max_new_tokens=10, seed=3, rewards=mixed_rewards(16, G))
    ref = perturbed(model)
    torch.manual_seed(5)
    critic = MiniMindScoreModel(model.config)
    with torch.no_grad():
        critic.score.weight.normal_(0, 0.02)   # non-zero head: the trunk gets a gradient too
    results = []
    for mbs in (0, 2):
        if algo == "grpo":
            stage = GRPOStage(loss_fn=GRPOLoss(kl=KLConfig(coef=0.1)))
            learner = Learner(copy.deepcopy(model), stage, optim(micro_batch_size=mbs, grad_clip=0.0),
                              ref_model=copy.deepcopy(ref))
            modules = [learner.model]
        else:
            stage = PPOStage(loss_fn=PPOLoss(kl=KLConfig(coef=0.1, kind="k1", in_reward=True)),
                             update=RLUpdateConfig())
            learner = Learner(copy.deepcopy(model), stage, optim(micro_batch_size=mbs, grad_clip=0.0),
                              ref_model=copy.deepcopy(ref), critic=copy.deepcopy(critic))
            modules = [learner.model, learner.critic]
        stats = learner.train_step(batch)      # one update: its gradients stay on the parameters
        grads = [p.grad.detach().clone() for m in modules for p in m.parameters() if p.grad is not None]
        results.append((grads, stats))
    (g_full, s_full), (g_micro, s_micro) = results
    assert len(g_full) == len(g_micro) > 0
    assert s_full["grad_norm"] > 0
    for a, b in zip(g_full, g_micro):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # stats are reduced once, by token count: the same numbers with or without micro-batching
    for key in ("loss", "pg_loss", "entropy", "clip_frac") + (("kl",) if algo == "grpo" else ("vf_loss",)):
        assert s_full[key] == pytest.approx(s_micro[key], rel=1e-5, abs=1e-7), key
    if algo == "grpo":
        assert s_full["kl"] > 0


# ----------------------------------------------------------------------------- zero-variance filter
def _grouped_batch(model, informative: list[bool], uid_base: int, seed: int) -> RolloutBatch:
    """One group per entry; informative groups get rewards [1, 0, 0, 1], the others all 0."""
    G = 4
    batch = rollout(model, tiny_prompts(len(informative), seed=seed), G=G, seed=seed, uid_base=uid_base)
    r = torch.zeros(len(informative), G)
    for i, inf in enumerate(informative):
        if inf:
            r[i] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    return batch.with_rewards(r.view(-1))


def test_zero_variance_filter_refills_then_trains_on_informative_groups():
    model = tiny_model()
    stage = GRPOStage(filter=ZeroVarianceFilter(max_refills=2), update=RLUpdateConfig(minibatches=2))
    learner = Learner(copy.deepcopy(model), stage, optim(1e-3), ref_model=copy.deepcopy(model))
    before = weights(learner.model)

    mostly_flat = _grouped_batch(model, [True, False, False, False], uid_base=0, seed=10)
    s1 = learner.train_step(mostly_flat)
    assert s1["need_more"] == 1.0 and s1["updates"] == 0
    assert learner.step == 0 and not changed(before, learner.model)

    informative = _grouped_batch(model, [True, True, True, False], uid_base=100, seed=11)
    s2 = learner.train_step(informative)
    assert s2["need_more"] == 0.0
    assert s2["updates"] == 2 and learner.step == 2 and changed(before, learner.model)
    assert s2["rows"] == 16.0                   # 1 + 3 informative groups of 4, the 4 flat ones dropped
    assert s2["zero_var_frac"] == 0.0
    assert s2["reward_mean"] == pytest.approx(0.5)


def test_zero_variance_filter_honours_max_refills():
    model = tiny_model()
    stage = GRPOStage(filter=ZeroVarianceFilter(max_refills=2))
    learner = Learner(copy.deepcopy(model), stage, optim(1e-3), ref_model=copy.deepcopy(model))
    flat = lambda base, seed: _grouped_batch(model, [False] * 3, uid_base=base, seed=seed)  # noqa: E731
    one = _grouped_batch(model, [True, False, False], uid_base=0, seed=20)
    assert learner.train_step(one)["need_more"] == 1.0
    assert learner.train_step(flat(10, 21))["need_more"] == 1.0
    s = learner.train_step(flat(20, 22))           # third round: refills exhausted, train on what we have
    assert s["need_more"] == 0.0 and s["updates"] >= 1 and s["rows"] == 4.0
    # nothing informative at all: gives up after max_refills without an update, state is reset
    learner2 = Learner(copy.deepcopy(model), GRPOStage(filter=ZeroVarianceFilter(max_refills=1)),
                       optim(1e-3), ref_model=copy.deepcopy(model))
    assert learner2.train_step(flat(0, 23))["need_more"] == 1.0
    s = learner2.train_step(flat(10, 24))
    assert s["need_more"] == 0.0 and s["updates"] == 0 and learner2.step == 0
    assert learner2.train_step(flat(20, 25))["need_more"] == 1.0   # the next step starts a fresh count


# ----------------------------------------------------------------------------- PPO
def test_ppo_trains_policy_and_critic():
    model = tiny_model()
    torch.manual_seed(7)
    critic = MiniMindScoreModel(model.config)
    stage = PPOStage(update=RLUpdateConfig(minibatches=2))
    learner = Learner(copy.deepcopy(model), stage, optim(1e-3), ref_model=copy.deepcopy(model),
                      critic=critic)
    seen: list[dict] = []
    orig = stage.loss

    def spy(lrn, m):
        seen.append({"adv": m.exp.adv, "returns": m.exp.returns, "old_values": m.exp.old_values})
        return orig(lrn, m)

    stage.loss = spy
    pol0, crit0 = weights(learner.model), weights(learner.critic)
    head0 = learner.critic.score.weight.detach().clone()
    trunk0 = {k: v for k, v in crit0.items() if k.startswith("model.")}
    for step in range(3):
        batch = rollout(learner.model, tiny_prompts(4, seed=step), G=2, seed=30 + step,
                        rewards=torch.rand(8, generator=torch.Generator().manual_seed(step)))
        stats = learner.train_step(batch)
        assert stats["updates"] == 2
        for k in ("loss", "pg_loss", "vf_loss", "kl", "value_mean", "return_mean", "entropy", "logprob_gap"):
            assert k in stats and math.isfinite(stats[k]), k
    assert stats["kl"] != 0.0                      # policy moved away from the reference
    for m in seen:
        for t in m.values():
            assert torch.isfinite(t).all()
    assert changed(pol0, learner.model)
    assert not torch.equal(head0, learner.critic.score.weight)
    assert any(not torch.equal(trunk0[k], learner.critic.state_dict()[k]) for k in trunk0)


def test_ppo_needs_critic_and_reference():
    with pytest.raises(ValueError, match="critic"):
        Learner(tiny_model(), PPOStage(), optim())
    learner = Learner(tiny_model(), PPOStage(), optim(), critic=MiniMindScoreModel(tiny_model().config))
    batch = rollout(learner.model, tiny_prompts(2), G=2, seed=0, rewards=torch.rand(4))
    with pytest.raises(ValueError, match="reference"):
        learner.train_step(batch)


# ----------------------------------------------------------------------------- SPO
def _spo_learner(model, tracker: SPOTracker | None = None) -> Learner:
    stage = SPOStage(update=RLUpdateConfig(minibatches=2), tracker=tracker or SPOTracker())
    return Learner(copy.deepcopy(model), stage, optim(1e-3), ref_model=copy.deepcopy(model))


def test_spo_tracker_baseline_before_update_and_drift_rho():
    model = tiny_model()
    learner = _spo_learner(model)
    tr: SPOTracker = learner.stage.tracker
    prompts = tiny_prompts(6, seed=40)
    r1 = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    b1 = rollout(learner.model, prompts, G=1, seed=41, rewards=r1)
    keys = b1.prompt_keys
    s1 = learner.train_step(b1)
    # baseline read before the update: the prior's 0.5 for every unseen prompt
    assert s1["baseline_mean"] == pytest.approx(0.5) and s1["drift_mean"] == 0.0
    for k, r in zip(keys, r1.tolist()):   # first visit: drift 0 -> rho = rho_max
        a, b = tr.params(k)
        assert a == pytest.approx(tr.rho_max * 1.0 + r) and b == pytest.approx(tr.rho_max * 1.0 + 1 - r)
    ab1 = {k: tr.params(k) for k in keys}
    then = [tr.remembered(k) for k in keys]   # b1's responses and their logprobs under the sampling policy

    # second visit of the same prompts, after the policy moved: D rescores b1's responses now
    r2 = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    b2 = rollout(learner.model, prompts, G=1, seed=42, rewards=r2)
    drift = []
    with torch.no_grad():
        learner.model.eval()
        for prompt, resp, lp in then:
            seq = torch.tensor([prompt + resp])
            now = response_logprobs(learner.model, seq, torch.ones_like(seq), len(resp), 1.0)[0]
            drift.append(float((now - torch.tensor(lp)).abs().mean()))
        learner.model.train()
    drift = torch.tensor(drift, dtype=torch.float64)
    assert (drift > 0).all()
    v_before = torch.tensor([a / (a + b) for a, b in ab1.values()])
    s2 = learner.train_step(b2)
    assert s2["baseline_mean"] == pytest.approx(float(v_before.mean()), rel=1e-6)
    assert s2["drift_mean"] == pytest.approx(float(drift.mean()), rel=1e-4, abs=1e-7)
    rho = torch.clamp(2.0 ** (-drift / tr.d_half), tr.rho_min, tr.rho_max)
    for i, k in enumerate(keys):
        a0, b0 = ab1[k]
        a, b = tr.params(k)
        assert a == pytest.approx(float(rho[i]) * a0 + float(r2[i]), rel=1e-5)
        assert b == pytest.approx(float(rho[i]) * b0 + 1 - float(r2[i]), rel=1e-5)


def test_spo_drift_is_zero_for_an_unchanged_policy():
    """D is the policy's drift on the prompt's PREVIOUS response (rescored now vs when sampled), not
    the difference between two different sampled responses: with the policy unchanged, a second
    visit with a different response has D = 0 and rho at its maximum."""
    model = tiny_model()
    stage = SPOStage(tracker=SPOTracker())
    learner = Learner(copy.deepcopy(model), stage, optim(), ref_model=copy.deepcopy(model))
    prompts = tiny_prompts(6, seed=43)
    b1 = rollout(learner.model, prompts, G=1, max_new_tokens=10, seed=1, rewards=torch.rand(6).round())
    b2 = rollout(learner.model, prompts, G=1, max_new_tokens=10, seed=2, rewards=torch.rand(6).round())
    assert not torch.equal(b1.response_ids, b2.response_ids)    # different sampled responses
    stage.plan(learner, b1)                                      # planned, never applied: policy unchanged
    plan = stage.plan(learner, b2)
    assert plan.stats["drift_mean"] < 1e-6 and plan.stats["rho_mean"] == stage.tracker.rho_max


def test_spo_tracker_checkpointed_and_init(tmp_path):
    model = tiny_model()
    learner = _spo_learner(model)
    stage: SPOStage = learner.stage
    assert stage.init_tracker({"p0": [1.0, 0.0, 1.0, 1.0], "p1": [2.0, -1.0]}) == 2   # clipped to [0, 1]
    n0 = stage.tracker.n0
    assert stage.tracker.params("p0") == pytest.approx((n0 * 0.75, n0 * 0.25))
    assert stage.tracker.params("p1") == pytest.approx((n0 * 0.5, n0 * 0.5))
    batch = rollout(learner.model, tiny_prompts(4, seed=50), G=1, seed=51, rewards=torch.tensor([1.0, 0, 0, 1]))
    learner.train_step(batch)
    state = stage.tracker.state_dict()
    assert len(state["ab"]) == 4 and len(state["memory"]) == 4             # p0, p1 initialised, then seen
    rho = stage.tracker.rho_max                                             # first visit: drift 0
    assert stage.tracker.params("p0") == pytest.approx((rho * n0 * 0.75 + 1, rho * n0 * 0.25))
    assert stage.tracker.params("p2") == pytest.approx((rho, rho + 1))     # prior (1, 1), reward 0
    learner.save_checkpoint(tmp_path / "ckpt")

    fresh = _spo_learner(tiny_model(seed=3))
    assert len(fresh.stage.tracker) == 0
    fresh.load_checkpoint(tmp_path / "ckpt")
    assert fresh.stage.tracker.state_dict() == state
    assert fresh.step == learner.step
    for k, v in learner.model.state_dict().items():
        assert torch.equal(v, fresh.model.state_dict()[k])


# ----------------------------------------------------------------------------- it learns



def test_grpo_learns_a_trivial_reward():
    model = tiny_model(seed=11)
    prompts = tiny_prompts(8, seed=60)
    target = 7
    stage = GRPOStage(loss_fn=GRPOLoss(kl=KLConfig(coef=0.0)), update=RLUpdateConfig(minibatches=2))
    learner = Learner(model, stage, optim(5e-3))
    p0 = p_target(learner.model, prompts, target)
    rewards = []
    for step in range(15):
        batch = rollout(learner.model, prompts, G=8, max_new_tokens=2, seed=100 + step, uid_base=step * 100)
        r = (batch.response_ids[:, 0] == target).float()
        rewards.append(float(r.mean()))
        learner.train_step(batch.with_rewards(r))
    p1 = p_target(learner.model, prompts, target)
    print(f"p(target) {p0:.3f} -> {p1:.3f}; sampled reward {rewards}")
    # measured (model seeds 11-13): p 0.014-0.017 -> 0.978-0.984; sampled reward ~0.02 -> ~0.95
    assert p0 < 0.03 and p1 > 0.8
    assert sum(rewards[:3]) / 3 < 0.1 and sum(rewards[-3:]) / 3 > 0.7


def test_the_learner_never_writes_into_the_batches_it_is_handed():
    """Row ids and policy versions come from the producer; the learner actor reads them and trains
    (off-policy after a publication too) without changing a field of any batch."""
    from dataclasses import fields

    from learner.actor import LearnerWorker

    model = tiny_model()
    worker = LearnerWorker(lambda: Learner(perturbed(model), GRPOStage(update=RLUpdateConfig(minibatches=2)),
                                           optim(), ref_model=copy.deepcopy(model)))
    worker.weights(0)
    parts = [replace(rollout(model, tiny_prompts(3), G=2, seed=s, rewards=torch.rand(6)), policy_version=v,
                     row_id=(s << 24) + torch.arange(6)) for s, v in ((1, 0), (2, 0))]
    before = copy.deepcopy(parts)
    assert worker.train_step(*parts)["stale"] == 0.0
    worker.weights(1)
    assert worker.train_step(*parts)["stale"] == 1.0       # sampled with version 0, the learner published 1
    for b, was in zip(parts, before):
        for f in fields(b):
            new, old = getattr(b, f.name), getattr(was, f.name)
            assert torch.equal(new, old) if isinstance(new, torch.Tensor) else new == old, f.name
