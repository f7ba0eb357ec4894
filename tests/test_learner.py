"""Learner: micro-batch accumulation is exact, resume is exact, the NaN guard, lr warnings, the
schedule, DPO and LoRA through the learner. CPU, "tiny" preset with a 100-token vocabulary."""
from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch

from learner.config import OptimConfig
from learner.learner import Learner, TrainingDiverged
from learner.stages import DistillStage, DPOStage, LMStage, RewardModelStage
from learner.supervised import train_loop
from minimind.config import preset
from minimind.data.datasets import BatchIterator, collate_lm
from minimind.lora import LoRAConfig, apply_lora, lora_parameters, merge_lora
from learner.losses import distill_loss, dpo_loss
from minimind.model import MiniMindForCausalLM, MiniMindScoreModel, shift_labels

V = 100


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    return preset("tiny", vocab_size=V, **kw)


def _lm(seed=0, **kw):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(_cfg(**kw))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _lm_batch(B=7, T=12, seed=0):
    g = _gen(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    attn = (torch.arange(T)[None] < lengths[:, None]).long()
    labels = ids.masked_fill(attn == 0, -100)
    labels[:, :3] = -100                      # a "prompt" without loss
    ids = ids.masked_fill(attn == 0, 0)
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def _pair_batch(B=7, T=12, seed=0):
    g = _gen(seed)
    out = {}
    prompt = torch.randint(3, V, (B, 4), generator=g)
    for side in ("chosen", "rejected"):
        resp = torch.randint(3, V, (B, T - 4), generator=g)
        ids = torch.cat([prompt, resp], 1)
        lengths = torch.randint(6, T + 1, (B,), generator=g)
        attn = (torch.arange(T)[None] < lengths[:, None]).long()
        mask = attn.clone()
        mask[:, :4] = 0
        out[f"{side}_ids"] = ids.masked_fill(attn == 0, 0)
        out[f"{side}_mask"] = mask
        out[f"{side}_attention_mask"] = attn
    return out


def _grads_after_update(model, stage, batch, micro, ref=None):
    learner = Learner(copy.deepcopy(model), stage, OptimConfig(lr=1e-3, micro_batch_size=micro, grad_clip=0),
                      ref_model=copy.deepcopy(ref) if ref is not None else None)
    (micro_batches,) = list(stage.plan(learner, batch).updates)
    assert len(micro_batches) == (1 if micro == 0 else math.ceil(7 / micro))
    learner.train_step(batch)   # the gradients of its one update stay on the parameters
    return {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None}


def _score_model():
    torch.manual_seed(0)
    m = MiniMindScoreModel(_cfg())
    torch.nn.init.normal_(m.score.weight, std=0.5)  # a zero head would give the trunk zero gradient
    return m


@pytest.mark.parametrize("kind", ["lm", "dpo", "reward_model", "distill"])
def test_micro_batches_give_the_big_batch_gradient(kind):
    ref = None
    if kind == "lm":
        model, stage, batch = _lm(), LMStage(), _lm_batch()
    elif kind == "dpo":
        model, stage, batch = _lm(), DPOStage(beta=0.5), _pair_batch()
        ref = _lm(seed=1)  # a different reference so that the loss is not at its symmetric point
    elif kind == "reward_model":
        model, stage, batch = _score_model(), RewardModelStage(), _pair_batch()
    else:
        model, stage, batch = _lm(), DistillStage(alpha=0.3, temperature=2.0), _lm_batch()
        ref = _lm(seed=2)
    big = _grads_after_update(model, stage, batch, 0, ref)
    small = _grads_after_update(model, stage, batch, 3, ref)
    assert big.keys() == small.keys() and len(big) > 0
    assert any(g.abs().sum() > 0 for g in big.values())
    for n in big:
        torch.testing.assert_close(small[n], big[n], atol=1e-6, rtol=1e-5, msg=n)


def _plain_seq_logprobs(model, ids, attn, mask):
    """The straightforward computation: every position's logits, summed over the masked tokens."""
    lp = torch.log_softmax(model(ids, attention_mask=attn).logits[:, :-1].float(), -1)
    return (lp.gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]).sum(-1)


def _plain_loss(kind, model, ref, batch):
    if kind in ("lm", "moe"):
        return model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    if kind == "distill":
        with torch.no_grad():
            teacher = ref(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        student = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return distill_loss(student, teacher, shift_labels(batch["labels"]), alpha=0.3, temperature=2.0)[0]
    sides = [[_plain_seq_logprobs(m, batch[f"{s}_ids"], batch[f"{s}_attention_mask"], batch[f"{s}_mask"])
              for s in ("chosen", "rejected")] for m in (model, ref)]
    with torch.no_grad():
        refs = sides[1]
    return dpo_loss(*sides[0], *refs, 0.5, 0.0)[0]


@pytest.mark.parametrize("kind", ["lm", "moe", "dpo", "distill"])
def test_losses_run_only_the_positions_they_need_and_equal_the_padded_forward(kind):
    """Rows of different lengths with an unlabelled prompt: one training step's loss and gradient are
    those of the plain padded forward over every position, and the decoder's position-wise layers see
    only the labelled positions and the tokens before them (padding and each row's last token skipped).
    MoE stays padded: its load-balance loss is per padded row, as MiniMind's."""
    model, ref = _lm(use_moe=kind == "moe"), _lm(seed=1)
    stage = {"dpo": DPOStage(beta=0.5), "distill": DistillStage(alpha=0.3, temperature=2.0)}.get(kind, LMStage())
    batch = _pair_batch() if kind == "dpo" else _lm_batch()
    learner = Learner(copy.deepcopy(model), stage, OptimConfig(lr=1e-3, grad_clip=0),
                      ref_model=copy.deepcopy(ref) if kind in ("dpo", "distill") else None)
    rows_seen = []
    learner.model.model.layers[0].post_attention_layernorm.register_forward_hook(
        lambda _m, args, _out: rows_seen.append(args[0].shape[:-1].numel()))
    stats = learner.train_step(batch)
    plain = _plain_loss(kind, model, ref, batch)
    plain.backward()
    assert stats["loss"] == pytest.approx(float(plain.detach()), abs=1e-6)
    for n, p in learner.model.named_parameters():
        torch.testing.assert_close(p.grad, dict(model.named_parameters())[n].grad, atol=1e-6, rtol=1e-5, msg=n)
    if kind == "dpo":   # chosen and rejected in one pass; the labelled tokens are the responses
        attn = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    else:
        attn = batch["attention_mask"]
    assert rows_seen == [attn.numel() if kind == "moe" else int((attn.sum(1) - 1).sum())]


# ----------------------------------------------------------------------------- resume
class _ListDataset(list):
    collate = staticmethod(collate_lm)


def _dataset(n=10, T=10):
    rng = np.random.default_rng(0)
    out = _ListDataset()
    for _ in range(n):
        ids = rng.integers(3, V, size=int(rng.integers(5, T + 1)))
        out.append({"input_ids": ids, "labels": ids.copy()})
    return out


def _train(run_dir, steps, total, resume=False, seed=0):
    model = _lm(seed=seed, dropout=0.2)
    learner = Learner(model, LMStage(), OptimConfig(lr=3e-3, warmup_steps=2, total_steps=total))
    batches = BatchIterator(_dataset(), batch_size=3, seed=5)  # 4 batches per epoch (3, 3, 3, 1)
    train_loop(learner, batches, steps, run_dir, checkpoint_every=steps if not resume else 0,
               resume=resume, progress=False)
    return learner


@pytest.mark.parametrize("stop", [6, 8], ids=["mid_epoch", "epoch_boundary"])
def test_resume_is_exact(tmp_path, stop):
    N = 11
    full = _train(tmp_path / "full", N, N)
    part = _train(tmp_path / "part", stop, N)
    assert part.step == stop
    resumed = _train(tmp_path / "part", N, N, resume=True, seed=123)  # a different init: weights must be loaded
    assert resumed.step == N
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in
             (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, N + 1))  # finished steps are not run again, none is skipped
    # and a run without resume would differ (dropout RNG, data position and optimizer state all matter)
    fresh = _lm(seed=0, dropout=0.2)
    assert not torch.equal(fresh.model.embed_tokens.weight, full.model.model.embed_tokens.weight)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _train(tmp_path, 3, 3, resume=True)


# ----------------------------------------------------------------------------- NaN guard
class _NaNAt(LMStage):
    """LMStage whose loss is NaN on the chosen (0-based) loss calls."""

    def __init__(self, bad):
        super().__init__()
        self.bad, self.calls = set(bad), 0

    def loss(self, learner, m):
        loss, stats = super().loss(learner, m)
        i, self.calls = self.calls, self.calls + 1
        return (loss * float("nan") if i in self.bad else loss), stats


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_nan_step_is_skipped():
    learner = Learner(_lm(), _NaNAt({1}), OptimConfig(lr=1e-3, max_bad_steps=3))
    learner.train_step(_lm_batch(seed=0))
    before = _weights(learner.model)
    adam_before = copy.deepcopy(learner.optimizer.state_dict()["state"])
    stats = learner.train_step(_lm_batch(seed=1))
    assert stats["skipped"] == 1.0 and learner.step == 1 and learner.bad_steps == 1
    for k, v in learner.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, st in learner.optimizer.state_dict()["state"].items():
        assert torch.equal(st["exp_avg"], adam_before[k]["exp_avg"])
    stats = learner.train_step(_lm_batch(seed=2))  # the next good step goes through and resets the count
    assert "skipped" not in stats and learner.step == 2 and learner.bad_steps == 0


def test_consecutive_nans_raise_and_restore_last_good_checkpoint(tmp_path):
    learner = Learner(_lm(), _NaNAt({4, 5, 6}), OptimConfig(lr=1e-2, max_bad_steps=3))
    for s in range(2):
        learner.train_step(_lm_batch(seed=s))
    learner.save_checkpoint(tmp_path / "ck")
    good = _weights(learner.model)
    for s in range(2, 4):
        learner.train_step(_lm_batch(seed=s))
    assert learner.step == 4
    learner.train_step(_lm_batch(seed=4))
    learner.train_step(_lm_batch(seed=5))
    with pytest.raises(TrainingDiverged, match=r"3 consecutive non-finite steps ending at step 4\b") as e:
        learner.train_step(_lm_batch(seed=6))
    assert "step 2" in str(e.value) and str(tmp_path / "ck") in str(e.value)
    assert learner.step == 2
    for k, v in learner.model.state_dict().items():
        assert torch.equal(v, good[k]), k


def test_nan_guard_through_train_loop(tmp_path):
    learner = Learner(_lm(), _NaNAt({3}), OptimConfig(lr=1e-3, total_steps=5))
    batches = BatchIterator(_dataset(), batch_size=3, seed=0)
    train_loop(learner, batches, 5, tmp_path, progress=False)
    assert learner.step == 5   # the skipped update is not counted: 5 real updates happened
    assert _NaNAt.__name__ and learner.stage.calls == 6


# ----------------------------------------------------------------------------- lr and schedule
def test_absurd_lr_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="learner.learner"):
        Learner(_lm(), LMStage(), OptimConfig(lr=0.1))
    assert any("unusually high" in r.getMessage() and "lm" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="learner.learner"):
        Learner(_lm(), LMStage(), OptimConfig(lr=1e-3))
    assert not caplog.records


def test_schedule_warmup_then_cosine_to_floor():
    c = OptimConfig(lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    expected = {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 9: 0.1 + 0.9 * 0.5, 14: 0.1, 50: 0.1}
    for step, lr in expected.items():
        assert c.lr_at(step) == pytest.approx(lr, abs=1e-12), step
    assert c.lr_at(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert all(c.lr_at(s) >= c.lr_at(s + 1) for s in range(3, 20))
    # the learner uses lr_at(step) for the update it is doing
    learner = Learner(_lm(), LMStage(), OptimConfig(lr=1e-3, warmup_steps=4, total_steps=14))
    for s in range(6):
        stats = learner.train_step(_lm_batch(seed=s))
        assert stats["lr"] == pytest.approx(learner.optim_cfg.lr_at(s))


# ----------------------------------------------------------------------------- DPO and LoRA
def test_dpo_learns_toy_preferences():
    torch.manual_seed(0)
    B, P, R = 8, 4, 5
    prompt = torch.randint(3, V, (B, P))
    good = torch.tensor([10, 11, 12, 13, 2]).expand(B, R)
    bad = torch.tensor([20, 21, 22, 23, 2]).expand(B, R)
    mask = torch.cat([torch.zeros(B, P), torch.ones(B, R)], 1).long()
    batch = {"chosen_ids": torch.cat([prompt, good], 1), "rejected_ids": torch.cat([prompt, bad], 1),
             "chosen_mask": mask, "rejected_mask": mask,
             "chosen_attention_mask": torch.ones(B, P + R, dtype=torch.long),
             "rejected_attention_mask": torch.ones(B, P + R, dtype=torch.long)}
    policy = _lm()
    learner = Learner(policy, DPOStage(beta=0.1), OptimConfig(lr=1e-4, warmup_steps=2, total_steps=20),
                      ref_model=copy.deepcopy(policy))
    hist = [learner.train_step(batch) for _ in range(20)]
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)   # policy == reference at the start
    assert hist[0]["reward_accuracy"] == 0.0
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.1
    assert hist[-1]["reward_accuracy"] == 1.0 and hist[-1]["reward_margin"] > 0


def test_lora_trains_only_adapters_and_merge_is_exact():
    model = _lm()
    apply_lora(model, LoRAConfig(rank=4, alpha=8))
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    adapters = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    learner = Learner(model, LMStage(), OptimConfig(lr=1e-2, warmup_steps=0, total_steps=5))
    assert {id(p) for p in learner.params()} == {id(p) for p in lora_parameters(model)}
    for s in range(5):
        learner.train_step(_lm_batch(seed=s))
    sd = model.state_dict()
    for k, v in base.items():
        assert torch.equal(sd[k], v), k
    assert any(not torch.equal(sd[k], v) for k, v in adapters.items())
    batch = _lm_batch(seed=9)
    model.eval()
    with torch.no_grad():
        unmerged = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        merge_lora(model)
        merged = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not any("lora_" in k for k in model.state_dict())
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_curves_are_redrawn_while_training(tmp_path):
    """A person can watch a supervised run: curves.png exists (and is refreshed) before the run ends."""
    learner = Learner(_lm(), LMStage(), OptimConfig(lr=1e-3, total_steps=6))
    batches = BatchIterator(_dataset(), batch_size=3, seed=0)
    seen: dict[int, int] = {}

    def look(step, stats):
        png = tmp_path / "curves.png"
        seen[step] = png.stat().st_mtime_ns if png.exists() else 0

    train_loop(learner, batches, 6, tmp_path, progress=False, on_step=look, plot_every=2)
    assert seen[1] == 0 and seen[2] > 0 and seen[4] > seen[2]   # drawn at steps 2 and 4, before the end
