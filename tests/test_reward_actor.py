"""reward.scorers and reward.actor: guarded weighted scoring, batched reward model, Ray actor."""
from __future__ import annotations

import sys
import time
import types

import pytest
import ray
import torch

from reward.actor import RewardActor, RewardConfig, RewardWorker, build_scorer
from reward.scorers import (CombinedScorer, Component, FormatScorer, MathVerifierScorer, RewardModelScorer,
                            RowScorer, run_guarded)
from contract.batch import RolloutBatch

PAD = 0


def make_batch(responses: list[str], answers: list[str], resp_lens: list[int] | None = None,
               prompt_lens: list[int] | None = None, P: int = 4, R: int = 6, seed: int = 0) -> RolloutBatch:
    """Left-padded prompts, right-padded responses; token ids arbitrary but non-pad (>= 3)."""
    B = len(responses)
    g = torch.Generator().manual_seed(seed)
    resp_lens = resp_lens or [R] * B
    prompt_lens = prompt_lens or [P] * B
    prompt_ids = torch.full((B, P), PAD, dtype=torch.long)
    prompt_mask = torch.zeros(B, P, dtype=torch.long)
    response_ids = torch.full((B, R), PAD, dtype=torch.long)
    response_mask = torch.zeros(B, R)
    for i in range(B):
        pl, rl = prompt_lens[i], resp_lens[i]
        if pl:
            prompt_ids[i, P - pl:] = torch.randint(3, 50, (pl,), generator=g)
            prompt_mask[i, P - pl:] = 1
        if rl:
            response_ids[i, :rl] = torch.randint(3, 50, (rl,), generator=g)
            response_mask[i, :rl] = 1
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=response_mask,
        logprobs=-torch.rand(B, R) * response_mask, group_uid=torch.arange(B) // 2,
        prompt_keys=[f"q{i // 2}" for i in range(B)], answers=answers, response_text=responses, policy_version=3,
    )


RESPONSES = ["3 + 4 = 7\n#### 7", "#### 7 apples", "I get 8.", "\\boxed{\\frac{1}{2}}"]
ANSWERS = ["7", "7", "7", "0.5"]


class Const:
    """Batch scorer returning fixed values (optionally sleeping / raising / bad output)."""

    def __init__(self, values, sleep: float = 0.0, exc: Exception | None = None):
        self.values, self.sleep, self.exc = values, sleep, exc

    def __call__(self, batch):
        if self.sleep:
            time.sleep(self.sleep)
        if self.exc is not None:
            raise self.exc
        return torch.as_tensor(self.values, dtype=torch.float32)


class Flaky(RowScorer):
    """Row scorer that raises on responses containing BOOM and sleeps on SLOW."""

    def score_one(self, response, answer):
        if "BOOM" in response:
            raise RuntimeError("bad row")
        if "SLOW" in response:
            time.sleep(3.0)
        return 1.0


# ---------------------------------------------------------------------------------- scorers
def test_rule_scorers():
    b = make_batch(RESPONSES, ANSWERS)
    assert MathVerifierScorer("auto")(b).tolist() == [1.0, 1.0, 0.0, 1.0]
    assert MathVerifierScorer("hash")(b).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert FormatScorer()(b).tolist() == [1.0, 0.5, 0.0, 0.0]
    assert MathVerifierScorer()(b).dtype == torch.float32


def test_combined_weights_exact():
    b = make_batch(RESPONSES, ANSWERS)
    a = torch.tensor([1.0, 0.0, 0.25, -2.0])
    c = torch.tensor([0.5, 3.0, 1.0, 0.0])
    comb = CombinedScorer([("a", Const(a), 2.0), ("c", Const(c), -0.5)], timeout_s=None)
    rewards, info, _ = comb.score(b)
    expected = (2.0 * a.double() - 0.5 * c.double()).float()
    assert rewards.dtype == torch.float32
    assert torch.equal(rewards, expected)
    assert info["score/a"] == pytest.approx(a.mean().item())
    assert info["score/c"] == pytest.approx(c.mean().item())
    assert info["errors/a"] == info["errors/c"] == info["errors/total"] == 0
    assert info["reward/mean"] == pytest.approx(expected.mean().item())
    assert "accuracy" not in info  # no "math" component


def test_math_plus_format_weights():
    comb = CombinedScorer([("math", MathVerifierScorer(), 1.0), ("format", FormatScorer(), 0.1)])
    rewards, info, _ = comb.score(make_batch(RESPONSES, ANSWERS))
    assert torch.equal(rewards, torch.tensor([1.1, 1.05, 0.0, 1.0], dtype=torch.float64).float())
    assert info["accuracy"] == 0.75
    assert info["score/format"] == pytest.approx(1.5 / 4)


def test_row_exception_costs_only_that_row():
    b = make_batch(["#### 7", "BOOM #### 7", "#### 7", "#### 7"], ["7"] * 4)
    comb = CombinedScorer([("flaky", Flaky(), 1.0)], timeout_s=5.0, fallback_reward=-1.0)
    rewards, info, _ = comb.score(b)
    assert rewards.tolist() == [1.0, -1.0, 1.0, 1.0]
    assert info["errors/flaky"] == 1 and info["errors/total"] == 1 and info["timeouts/flaky"] == 0
    comb.score(b)
    assert comb.error_counts == {"flaky": 2}


def test_batch_scorer_exception_and_bad_outputs_fall_back():
    b = make_batch(RESPONSES, ANSWERS)
    comb = CombinedScorer([
        ("raises", Const(None, exc=ValueError("model exploded")), 1.0),
        ("shape", Const([1.0, 2.0]), 1.0),
        ("nan", Const([1.0, float("nan"), float("inf"), 2.0]), 1.0),
        ("ok", Const([1.0, 1.0, 1.0, 1.0]), 1.0),
    ], timeout_s=2.0, fallback_reward=0.0)
    rewards, info, _ = comb.score(b)  # must not raise
    assert rewards.tolist() == [2.0, 1.0, 1.0, 3.0]
    assert (info["errors/raises"], info["errors/shape"], info["errors/nan"], info["errors/ok"]) == (4, 4, 2, 0)
    assert info["errors/total"] == 10


def test_timeout_batch_scorer_is_bounded():
    b = make_batch(RESPONSES, ANSWERS)
    comb = CombinedScorer([("slow", Const([1.0] * 4, sleep=3.0), 1.0), ("fast", Const([0.5] * 4), 1.0)],
                          timeout_s=0.2, fallback_reward=-0.25)
    t0 = time.perf_counter()
    rewards, info, _ = comb.score(b)
    assert time.perf_counter() - t0 < 1.5
    assert rewards.tolist() == [0.25] * 4
    assert info["timeouts/slow"] == 1 and info["errors/slow"] == 4 and info["timeouts/fast"] == 0
    assert comb.timeout_counts == {"slow": 1, "fast": 0}


def test_timeout_row_scorer_keeps_finished_rows():
    b = make_batch(["a", "b", "SLOW", "c"], ["1"] * 4)
    t0 = time.perf_counter()
    r = run_guarded(Flaky(), b, timeout_s=0.3, fallback=-1.0, name="flaky")
    assert time.perf_counter() - t0 < 1.5
    assert r.timed_out and r.errors == 2
    assert r.values.tolist() == [1.0, 1.0, -1.0, -1.0]


def test_per_component_timeout_and_fallback_override():
    b = make_batch(RESPONSES, ANSWERS)
    comb = CombinedScorer([Component("slow", Const([1.0] * 4, sleep=2.0), 1.0, timeout_s=0.1, fallback=5.0)],
                          timeout_s=30.0, fallback_reward=0.0)
    t0 = time.perf_counter()
    assert comb(b).tolist() == [5.0] * 4
    assert time.perf_counter() - t0 < 1.0


def test_combined_rejects_duplicate_names():
    with pytest.raises(ValueError):
        CombinedScorer([("a", Const([0.0]), 1.0), ("a", Const([0.0]), 1.0)])


# --------------------------------------------------------------------------- reward model
class StandInRM(torch.nn.Module):
    """values[b, t] = id of token t (so the value read tells which token was picked); records
    the batch shapes it was called with."""

    def __init__(self, vocab: int = 64):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 1)
        with torch.no_grad():
            self.emb.weight.copy_(torch.arange(vocab, dtype=torch.float32).view(-1, 1))
        self.calls: list[tuple[int, int]] = []

    def forward(self, input_ids, attention_mask):
        self.calls.append(tuple(input_ids.shape))
        assert attention_mask.shape == input_ids.shape
        return self.emb(input_ids).squeeze(-1)


def _expected_last_token(b: RolloutBatch) -> list[float]:
    seq, mask = b.sequences, b.attention_mask
    out = []
    for i in range(len(b)):
        idx = mask[i].nonzero().flatten()
        out.append(float(seq[i, idx[-1]]) if len(idx) else float("nan"))
    return out


def test_reward_model_scorer_batches_and_picks_last_real_token():
    b = make_batch(["x"] * 5, [""] * 5, resp_lens=[6, 3, 1, 0, 5], prompt_lens=[4, 2, 3, 2, 1])
    rm = StandInRM()
    scorer = RewardModelScorer(rm, tokenizer_pad_id=PAD, batch_size=64)
    got = scorer(b)
    assert rm.calls == [(5, 10)]                      # one forward for B <= batch_size
    assert got.tolist() == _expected_last_token(b)  # row 3 (empty response) -> last prompt token
    assert got.dtype == torch.float32


def test_reward_model_scorer_chunks_and_trims_right_padding():
    b = make_batch(["x"] * 5, [""] * 5, resp_lens=[2, 3, 1, 1, 1], R=8)
    rm = StandInRM()
    got = RewardModelScorer(rm, tokenizer_pad_id=PAD, batch_size=2)(b)
    assert rm.calls == [(2, 4 + 3), (2, 4 + 1), (1, 4 + 1)]
    assert got.tolist() == _expected_last_token(b)


def test_reward_model_scorer_empty_row_falls_back():
    b = make_batch(["x"] * 3, [""] * 3, resp_lens=[2, 0, 1], prompt_lens=[4, 0, 4])
    comb = CombinedScorer([("rm", RewardModelScorer(StandInRM(), PAD), 1.0)], fallback_reward=-3.0)
    rewards, info, _ = comb.score(b)
    exp = _expected_last_token(b)
    assert rewards.tolist() == [exp[0], -3.0, exp[2]]
    assert info["errors/rm"] == 1


def test_reward_model_scorer_with_minimind_score_model():
    mm = pytest.importorskip("minimind.model")
    if not hasattr(mm, "MiniMindScoreModel"):
        pytest.skip("minimind.model.MiniMindScoreModel not available")
    from minimind.config import preset

    torch.manual_seed(0)
    model = mm.MiniMindScoreModel(preset("tiny", vocab_size=64)).eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)
    b = make_batch(["x"] * 4, [""] * 4, resp_lens=[6, 2, 4, 1], prompt_lens=[4, 1, 3, 2])
    got = RewardModelScorer(model, tokenizer_pad_id=PAD, batch_size=64)(b)
    # reference: every row alone, without any padding
    seq, mask = b.sequences, b.attention_mask.bool()
    with torch.no_grad():
        ref = [model(seq[i][mask[i]].unsqueeze(0), attention_mask=torch.ones(1, int(mask[i].sum()),
                                                                              dtype=torch.long))[0, -1].item()
               for i in range(len(b))]
    assert torch.allclose(got, torch.tensor(ref), atol=1e-5)
    assert len(set(round(v, 4) for v in ref)) > 1


# --------------------------------------------------------------------------------- worker
def test_reward_worker_without_ray():
    w = RewardWorker(RewardConfig(math_weight=1.0, format_weight=0.1))
    b = make_batch(RESPONSES, ANSWERS)
    out = w.score(b)
    assert out is not b and b.rewards is None
    assert out.rewards.dtype == torch.float32 and out.rewards.shape == (4,)
    assert torch.equal(out.rewards, torch.tensor([1.1, 1.05, 0.0, 1.0], dtype=torch.float64).float())
    # the verifier's own 1/0 per row, apart from the format bonus; kept row for row when cut into parts
    assert out.correct.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert out.select([2, 0]).correct.tolist() == [0.0, 1.0]
    assert RolloutBatch.concat([out.select([2]), out.select([1, 3])]).correct.tolist() == [0.0, 1.0, 1.0]
    info = out.reward_info
    assert info["accuracy"] == 0.75 and info["errors/total"] == 0 and info["rows"] == 4
    assert info["seconds"] >= 0 and info["policy_version"] == 3
    assert w.stats()["batches"] == 1 and w.stats()["errors"] == {"math": 0, "format": 0}


def test_reward_config_validation():
    with pytest.raises(ValueError):
        RewardConfig(answer_mode="regex")
    with pytest.raises(ValueError):
        RewardConfig(rm_weight=0.5)
    with pytest.raises(ValueError):
        RewardConfig(math_weight=float("nan"))
    names = [c.name for c in build_scorer(RewardConfig(format_weight=0.0)).components]
    assert names == ["math"]  # math always present: it gives accuracy


def test_reward_config_loads_reward_model(monkeypatch):
    loaded = []

    def load_score_model(path, device="cpu"):
        loaded.append((path, device))
        return StandInRM()

    fake = types.ModuleType("minimind.checkpoint")
    fake.load_score_model = load_score_model
    monkeypatch.setitem(sys.modules, "minimind.checkpoint", fake)
    w = RewardWorker(RewardConfig(math_weight=0.0, format_weight=0.0, rm_path="some/rm", rm_weight=2.0,
                                  rm_device="cpu"))
    assert loaded == [("some/rm", "cpu")]
    b = make_batch(RESPONSES, ANSWERS)
    out = w.score(b)
    assert out.rewards.tolist() == [2.0 * v for v in _expected_last_token(b)]
    assert "score/rm" in out.reward_info


def test_reward_config_loads_real_checkpoint(tmp_path):
    ckpt = pytest.importorskip("minimind.checkpoint")
    mm = pytest.importorskip("minimind.model")
    if not (hasattr(ckpt, "save_model") and hasattr(ckpt, "load_score_model")):
        pytest.skip("minimind.checkpoint save_model/load_score_model not available")
    from minimind.config import preset

    torch.manual_seed(1)
    model = mm.MiniMindScoreModel(preset("tiny", vocab_size=64)).eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)
    ckpt.save_model(model, tmp_path / "rm")
    b = make_batch(RESPONSES, ANSWERS, resp_lens=[6, 2, 4, 1])
    want = RewardModelScorer(model, PAD)(b)
    w = RewardWorker(RewardConfig(math_weight=0.0, format_weight=0.0, rm_path=str(tmp_path / "rm"), rm_weight=1.0,
                                  rm_device="cpu"))
    got = w.score(b).rewards
    assert torch.allclose(got, want, atol=1e-6)


# ------------------------------------------------------------------------------------ ray
def test_reward_actor_through_ray(ray_local):
    actor = RewardActor.options(num_cpus=0.5).remote(
        RewardConfig(format_weight=0.1, timeout_s=5.0, fallback_reward=-1.0))
    try:
        b = make_batch(RESPONSES + ["BOOM"], ANSWERS + ["1"])
        ref = ray.put(b)
        out = ray.get(actor.score.remote(ref), timeout=60)
        assert isinstance(out, RolloutBatch)
        assert out.rewards.dtype == torch.float32 and out.rewards.shape == (5,)
        assert torch.equal(out.rewards, torch.tensor([1.1, 1.05, 0.0, 1.0, 0.0], dtype=torch.float64).float())
        assert out.reward_info["accuracy"] == pytest.approx(3 / 5)
        assert out.reward_info["errors/total"] == 0
        assert out.response_text == b.response_text and torch.equal(out.response_ids, b.response_ids)
        stats = ray.get(actor.stats.remote(), timeout=30)
        assert stats["batches"] == 1 and stats["rows"] == 5
    finally:
        ray.kill(actor)


def test_reward_actor_custom_components_report_errors(ray_local):
    # Flaky lives in this test module, which Ray workers cannot import: ship it by value
    this = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(this)
    actor = RewardActor.options(num_cpus=0.5).remote(
        RewardConfig(timeout_s=2.0, fallback_reward=-1.0),
        components=[("math", MathVerifierScorer("hash"), 1.0), ("flaky", Flaky(), 0.5)])
    try:
        ref = ray.put(make_batch(["#### 7", "BOOM #### 7"], ["7", "7"]))
        out = ray.get(actor.score.remote(ref), timeout=60)
        assert out.rewards.tolist() == [1.5, 0.5]
        assert out.reward_info["errors/flaky"] == 1 and out.reward_info["accuracy"] == 1.0
    finally:
        ray.kill(actor)
        ray.cloudpickle.unregister_pickle_by_value(this)
