"""The policy-loss family on the user's path: `--loss NAME` builds the GRPO stage the run trains with
(paper defaults, DAPO's dynamic sampling and lengths from the rollout budget), every loss learns a
trivial reward through the Learner, the truncated importance weights enter the stage's gradient with
the mismatch logged, and the int8 rollout engine re-quantises at each weight sync.
CPU, fp32, "tiny" preset, vocab 64 (the helpers of tests/test_rl_stages.py)."""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import get_args

import pytest
import torch

from recipes.cli import parse_config
from learner.learner import Learner
from learner.losses import POLICY_LOSSES, CISPOLoss, DAPOLoss, GSPOLoss, PolicyLossName, SPOLoss
from learner.stages import GRPOStage, RLUpdateConfig
from minimind.quantize import int8_layers, quantize_int8
from recipes.rl_config import GRPOMathConfig, SPOMathConfig
from rollout.engines import NativeEngine
from rollout.worker import RolloutConfig
from rl_helpers import mixed_rewards, optim, p_target, rollout, tiny_model, tiny_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(*argv: str, cls=GRPOMathConfig):
    return parse_config(cls, list(argv))


# ----------------------------------------------------------------------------- recipe settings
def test_loss_flag_selects_the_section_with_its_paper_defaults():
    assert list(get_args(PolicyLossName)) == list(POLICY_LOSSES)
    for name in POLICY_LOSSES:
        cfg = _cfg("--loss", name, "--rollout.sampling.max-new-tokens", "24")
        assert type(cfg.stage().loss_fn) is POLICY_LOSSES[name] and cfg.stage().loss_fn == cfg.policy_loss
        # DAPO's dynamic sampling is the stage's zero-variance filter: on for dapo only
        assert (cfg.stage().filter is not None) == (name == "dapo"), name
    dapo = _cfg("--loss", "dapo", "--rollout.sampling.max-new-tokens", "24").policy_loss
    assert (dapo.clip.eps_low, dapo.clip.eps_high, dapo.kl.coef, dapo.overlong_max_len, dapo.buffer()) == \
        (0.2, 0.28, 0.0, 24, 4)
    dr = _cfg("--loss", "dr_grpo", "--rollout.sampling.max-new-tokens", "24").policy_loss
    assert (dr.max_response_len, dr.clip.agg_mode, dr.kl.coef) == (24, "seq-mean-token-sum-norm", 0.0)
    gspo = _cfg("--loss", "gspo", "--gspo.variant", "token").policy_loss
    assert (gspo.clip.eps_low, gspo.clip.eps_high, gspo.variant) == (3e-4, 4e-4, "token")
    cispo = _cfg("--loss", "cispo", "--cispo.ratio-max", "3").policy_loss
    assert (cispo.ratio_max, cispo.kl.coef, cispo.agg_mode) == (3.0, 0.1, "seq-mean-token-mean")
    assert _cfg("--loss", "dapo", "--dapo.overlong-max-len", "30").dapo.overlong_max_len == 30
    assert _cfg("--loss", "dapo", "--no-filter-zero-variance").stage().filter is None
    assert _cfg("--filter-zero-variance").stage().filter is not None
    grpo = _cfg().policy_loss   # the recipe's own GRPO defaults are unchanged
    assert (grpo.clip.eps_high, grpo.kl.coef, _cfg().stage().filter) == (0.28, 0.01, None)


def test_a_section_other_than_the_selected_loss_is_refused(capsys):
    with pytest.raises(SystemExit):
        _cfg("--loss", "cispo", "--dapo.clip.eps-high", "0.3")
    err = capsys.readouterr().err
    assert "--dapo.* settings are given but --loss is cispo" in err and "pass --loss dapo" in err
    with pytest.raises(SystemExit):
        _cfg("--grpo.kl.coef", "0.1", "--loss", "gspo")
    assert "pass --loss grpo" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # SPO offers the objectives that need no groups
        _cfg("--loss", "dapo", cls=SPOMathConfig)
    assert "invalid choice: 'dapo'" in capsys.readouterr().err
    for name, cls in (("spo", SPOLoss), ("cispo", CISPOLoss), ("gspo", GSPOLoss)):
        assert type(_cfg("--loss", name, cls=SPOMathConfig).stage().loss_fn) is cls


def test_int8_rollouts_turn_the_correction_on_unless_set():
    """The default cap is what the stage trains with (MathRLConfig.run_update, INT8_TIS_CAP); the
    --update field keeps what the user said, and the resolved config (config.json) records the cap."""
    assert _cfg().stage().update.tis_cap is None
    int8 = _cfg("--rollout.quantize", "int8")
    assert int8.update.tis_cap is None and int8.stage().update.tis_cap == 2.0 and int8.resolved().update.tis_cap == 2.0
    assert _cfg("--rollout.quantize", "int8", "--update.tis-cap", "3").stage().update.tis_cap == 3.0
    off = _cfg("--rollout.quantize", "int8", "--update.tis-cap", "0")
    assert off.update.tis_cap == 0 and not off.stage().update.tis_cap
    assert _cfg("--update.tis-cap", "1.5", "--update.tis-level", "sequence").stage().update.tis_level == "sequence"
    assert _cfg("--rollout.quantize", "int8", "--update.use-rollout-logprobs").stage().update.tis_cap is None
    with pytest.raises(ValueError, match="weights would all be 1"):
        RLUpdateConfig(tis_cap=2.0, use_rollout_logprobs=True)
    with pytest.raises(ValueError, match="tis-cap=0.5"):
        RLUpdateConfig(tis_cap=0.5)
    with pytest.raises(ValueError, match="--rollout.engine native"):
        RolloutConfig(engine="vllm", quantize="int8")


# ----------------------------------------------------------------------------- every loss learns
@pytest.mark.parametrize("name", list(POLICY_LOSSES))
def test_every_loss_learns_a_trivial_reward_through_its_recipe_stage(name):
    """The stage `--loss NAME` builds (two minibatches per batch so the ratio moves), 15 steps of
    reward 1 for token 7 first: p(target) must go from < 0.03 to > 0.8."""
    model = tiny_model(seed=11)
    prompts = tiny_prompts(8, seed=60)
    target = 7
    cfg = _cfg("--loss", name, "--rollout.sampling.max-new-tokens", "2", "--update.minibatches", "2",
               f"--{name.replace('_', '-')}.kl.coef", "0", "--no-filter-zero-variance")
    learner = Learner(model, cfg.stage(), optim(5e-3))
    p0 = p_target(learner.model, prompts, target)
    for step in range(15):
        batch = rollout(learner.model, prompts, G=8, max_new_tokens=2, seed=100 + step, uid_base=step * 100)
        stats = learner.train_step(batch.with_rewards((batch.response_ids[:, 0] == target).float()))
        assert math.isfinite(stats["loss"])
    p1 = p_target(learner.model, prompts, target)
    print(f"{name}: p(target) {p0:.3f} -> {p1:.3f}")
    assert p0 < 0.03 and p1 > 0.8, (name, p0, p1)   # measured: 0.95 (gspo) to 0.996 (cispo)


# ----------------------------------------------------------------------------- TIS in the stage
def _grads(stage: GRPOStage, model, batch) -> tuple[list[torch.Tensor], dict]:
    learner = Learner(copy.deepcopy(model), stage, optim(grad_clip=0.0))
    stats = learner.train_step(batch)
    return [p.grad.detach().clone() for p in learner.model.parameters() if p.grad is not None], stats


def test_truncated_importance_weights_scale_the_stage_gradient_and_log_the_mismatch():
    """An engine whose logprobs are the learner's + s on every token: the token weight is
    min(exp(-s), C), the gradient that weight times the uncorrected one, and the stats say so."""
    model = tiny_model()
    G = 4
    batch = rollout(model, tiny_prompts(4), G=G, max_new_tokens=6, seed=3, rewards=mixed_rewards(16, G))
    loss = DAPOLoss(overlong_shaping=False)
    base, s0 = _grads(GRPOStage(loss_fn=loss), model, batch)
    assert s0["mismatch_abs_max"] < 1e-5 and "tis_truncated_frac" not in s0   # logged even with TIS off
    m = batch.response_mask
    for shift, want_w, truncated in ((0.1, math.exp(-0.1), 0.0), (-1.0, 2.0, 1.0)):
        shifted = replace(batch, logprobs=batch.logprobs + shift * m)
        g, s = _grads(GRPOStage(loss_fn=loss, update=RLUpdateConfig(tis_cap=2.0)), model, shifted)
        assert s["mismatch_abs_mean"] == pytest.approx(abs(shift), abs=1e-5)
        assert s["mismatch_abs_max"] == pytest.approx(abs(shift), abs=1e-5)
        assert s["tis_weight_mean"] == pytest.approx(want_w, rel=1e-5)
        assert s["tis_truncated_frac"] == truncated
        for a, b in zip(g, base):
            torch.testing.assert_close(a, want_w * b, rtol=1e-4, atol=1e-7)   # |grad| up to ~1e-2
    # sequence level: one weight per response, exp(-s * length) truncated at C
    shifted = replace(batch, logprobs=batch.logprobs + 0.05 * m)
    _, s = _grads(GRPOStage(loss_fn=loss, update=RLUpdateConfig(tis_cap=2.0, tis_level="sequence")), model, shifted)
    lens = m.sum(-1)
    assert s["tis_weight_mean"] == pytest.approx(float(torch.exp(-0.05 * lens).mean()), rel=1e-4)


# ----------------------------------------------------------------------------- int8 engine
def test_int8_engine_requantises_at_each_weight_sync():
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    engine = NativeEngine(a.config, "cpu", quantize="int8")
    assert engine.name == "native-int8" and int8_layers(engine.model) > 0
    seq = torch.tensor(tiny_prompts(1, seed=2))
    for src in (a, b):
        engine.load_weights(src.state_dict())
        with torch.no_grad():
            got = engine.model(seq).logits
            want = quantize_int8(src)(seq).logits
            fp32 = src.eval()(seq).logits
        torch.testing.assert_close(got, want, rtol=0, atol=0)     # the synced weights, quantised
        assert 0 < float((got - fp32).abs().max()) < 0.05 * float(fp32.abs().max())
    with pytest.raises(ValueError, match="CPU path"):
        NativeEngine(a.config, "meta", quantize="int8")


@pytest.mark.parametrize("name", ["cispo", "gspo"])
def test_spo_recipe_trains_the_chosen_objective_on_tracker_advantages(name):
    """`spo_math.py --loss NAME`: the same SPO advantages (r − v normalised over the batch, v read
    before the tracker's update) go into the chosen objective; the step updates the policy."""
    from learner.losses import spo_advantages

    model = tiny_model()
    cfg = _cfg("--loss", name, cls=SPOMathConfig)
    stage = cfg.stage()
    learner = Learner(copy.deepcopy(model), stage, optim(1e-3), ref_model=copy.deepcopy(model))
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    batch = rollout(learner.model, tiny_prompts(6, seed=40), G=1, seed=41, rewards=r)
    plan = stage.plan(learner, batch)
    want = spo_advantages(r, torch.full((6,), 0.5))
    micro = next(iter(plan.updates))[0]     # rows in the minibatch shuffle's order
    torch.testing.assert_close(micro.exp.adv.sort().values, want.sort().values)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    stats = learner.train_step(rollout(learner.model, tiny_prompts(6, seed=40), G=1, seed=42, rewards=r))
    assert stats["updates"] == 1 and math.isfinite(stats["loss"])
    assert ("is_weight_mean" in stats) == (name == "cispo") and ("seq_clip_frac" in stats) == (name == "gspo")
    assert any(not torch.equal(before[k], v) for k, v in learner.model.state_dict().items())
