"""Native engine: batching, caching and logprobs must be exact, not approximately right."""
import pytest
import torch

from minimind.config import preset
from minimind.generate import SamplingParams, generate, process_logits
from minimind.model import MiniMindForCausalLM

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


def tiny(name: str) -> MiniMindForCausalLM:
    torch.manual_seed(0)
    return MiniMindForCausalLM(preset(name, vocab_size=300)).eval()


def recomputed_logprobs(model, out, temperature=1.0):
    seq = torch.cat([out.prompt_ids, out.response_ids], 1)
    mask = torch.cat([out.prompt_mask, out.response_mask.long()], 1)
    with torch.no_grad():
        logits = model(seq, attention_mask=mask).logits.float() / temperature
    P = out.prompt_ids.shape[1]
    lp = torch.log_softmax(logits[:, P - 1:-1], -1)
    return lp.gather(-1, out.response_ids.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe", "tiny-qk"])
def test_greedy_batched_equals_one_at_a_time(name):
    model = tiny(name)
    params = SamplingParams(max_new_tokens=20, temperature=0, compact_every=4)
    out = generate(model, PROMPTS, params)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(model, [prompt], params)
        batched = out.response_ids[i][out.response_mask[i].bool()]
        single = alone.response_ids[0][alone.response_mask[0].bool()]
        assert torch.equal(batched, single)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cached_logprobs_equal_full_forward(name, temperature):
    """What the rollout reports is what the learner recomputes, for the same weights (fp32)."""
    model = tiny(name)
    # many stop tokens so rows finish at different steps and the batch gets compacted
    params = SamplingParams(max_new_tokens=24, temperature=temperature, n=4, seed=1, compact_every=2,
                            stop_token_ids=tuple(range(2, 40)))
    out = generate(model, PROMPTS, params)
    lengths = out.response_mask.sum(1)
    assert lengths.min() < lengths.max(), "test needs ragged responses to exercise compaction"
    diff = ((recomputed_logprobs(model, out, temperature) - out.logprobs) * out.response_mask).abs().max()
    assert diff < 1e-5
    assert torch.all(out.logprobs[out.response_mask == 0] == 0)


def test_stop_token_ends_row_and_is_masked_in():
    model = tiny("tiny")
    params = SamplingParams(max_new_tokens=30, temperature=1.0, n=8, seed=3, stop_token_ids=tuple(range(2, 60)))
    out = generate(model, [[7, 8, 9]], params)
    for row, mask in zip(out.response_ids, out.response_mask):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        if n < out.response_ids.shape[1]:
            assert 2 <= int(row[n - 1]) < 60          # last kept token is a stop token
            assert (row[n:] == 0).all()                # then padding
        assert not any(2 <= int(t) < 60 for t in row[: n - 1])


def test_n_samples_grouped_and_seeded():
    model = tiny("tiny")
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=7, stop_token_ids=())
    a = generate(model, PROMPTS, params)
    b = generate(model, PROMPTS, params)
    assert torch.equal(a.response_ids, b.response_ids)
    assert a.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.equal(a.prompt_ids[3], a.prompt_ids[5])


@pytest.mark.parametrize("name", ["tiny", "tiny-qk"])
def test_prefill_shared_by_n_samples_equals_one_prefill_per_row(name):
    """n samples reuse their prompt's single prefill (KVCache.repeat_rows): same as prefilling
    every row, which is what passing each prompt n times with n=1 does."""
    model = tiny(name)
    shared = generate(model, PROMPTS, SamplingParams(max_new_tokens=12, temperature=0, n=4))
    per_row = generate(model, [p for p in PROMPTS for _ in range(4)],
                       SamplingParams(max_new_tokens=12, temperature=0, n=1))
    assert torch.equal(shared.response_ids, per_row.response_ids)
    assert torch.equal(shared.prompt_ids, per_row.prompt_ids)
    assert torch.allclose(shared.logprobs, per_row.logprobs, atol=1e-6, rtol=0)
    assert shared.response_ids.shape == (12, 12)


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    lp = process_logits(logits, SamplingParams(top_k=2))
    assert torch.isinf(lp[0, 2:]).all() and torch.allclose(lp[0, :2].exp().sum(), torch.tensor(1.0))
    probs = logits.softmax(-1)[0]
    # top_p just above the first token's mass keeps exactly two tokens
    lp = process_logits(logits, SamplingParams(top_p=float(probs[0]) + 1e-3))
    assert torch.isfinite(lp[0, :2]).all() and torch.isinf(lp[0, 2:]).all()
    expected = torch.log(probs[:2] / probs[:2].sum())
    assert torch.allclose(lp[0, :2], expected, atol=1e-6)


def test_sampled_tokens_never_outside_top_k():
    model = tiny("tiny")
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_k=3, n=16, seed=0, stop_token_ids=())
    out = generate(model, [[5, 6, 7]], params)
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7]])).logits[0, -1]
    allowed = set(logits.topk(3).indices.tolist())
    assert set(out.response_ids[:, 0].tolist()) <= allowed


def test_bad_params_are_named():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(tiny("tiny"), [[1] * 1000], SamplingParams(max_new_tokens=100))
