"""Dynamic int8 copies of the policy for CPU rollouts (minimind/quantize.py): close to fp32, the
native engine generates with them, and new float weights re-quantise through load_state_dict."""
import copy

import pytest
import torch

from learner.losses import mismatch_stats
from minimind.config import preset
from minimind.generate import SamplingParams, generate
from minimind.model import MiniMindForCausalLM
from minimind.quantize import Int8DynamicLinear, int8_layers, quantize_int8

pytestmark = pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines,
                                reason="int8 rollouts need torch's fbgemm engine (x86)")


def model(name="tiny", seed=0):
    torch.manual_seed(seed)
    m = MiniMindForCausalLM(preset(name)).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(4.0)  # logits std ~0.64, max ~6 (init's: 0.16): peakier, like a trained model's
    return m


def logprobs(m, x):
    with torch.no_grad():
        return m(x).logits.log_softmax(-1)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_int8_logprobs_are_close_to_fp32(name):
    m = model(name)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    q = quantize_int8(m)
    layers = 4 + (3 if name == "tiny" else 3 * (preset(name).n_routed_experts + preset(name).n_shared_experts))
    assert int8_layers(q) == preset(name).num_hidden_layers * layers + 1   # + the LM head
    assert int8_layers(m) == 0 and m.lm_head.weight is m.model.embed_tokens.weight  # source untouched
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    x = torch.randint(3, 6400, (4, 24), generator=torch.Generator().manual_seed(1))
    a, b = logprobs(m, x), logprobs(q, x)
    p = a.exp()
    # measured (reduce_range off, VNNI CPU): tiny max 0.035, probability-weighted mean 0.005
    assert float((a - b).abs().max()) < 0.08
    assert float(((a - b).abs() * p).sum(-1).mean()) < 0.012
    assert float((a - b).abs().max()) > 1e-5  # it really is quantised


def test_generation_runs_on_int8_close_to_the_fp32_policy():
    m = model()
    q = quantize_int8(m)
    prompts = [[5, 6, 7, 8], [9, 10]]
    out = generate(q, prompts, SamplingParams(max_new_tokens=12, n=3, seed=3, stop_token_ids=()))
    assert out.response_ids.shape == (6, 12) and out.new_tokens == 72
    seq = torch.cat([out.prompt_ids, out.response_ids], 1)
    attn = torch.cat([out.prompt_mask, torch.ones_like(out.response_ids)], 1)
    R = out.response_ids.shape[1]

    def recompute(policy):
        with torch.no_grad():
            lp = policy(seq, attention_mask=attn).logits[:, -R - 1:-1].log_softmax(-1)
        return lp.gather(-1, out.response_ids.unsqueeze(-1)).squeeze(-1)

    # activations are quantised per call with ONE scale for the whole batch, so an int8 model's
    # logprobs depend (slightly) on the other rows: a recomputation is not the sampling distribution,
    # the engine's own logprobs are; TIS compares those with the fp32 learner's
    assert float((recompute(q) - out.logprobs).abs().max()) < 0.08
    gap = mismatch_stats(recompute(m), out.logprobs, out.response_mask)
    assert 1e-4 < gap["mismatch_abs_mean"] < 0.012 and gap["mismatch_abs_max"] < 0.08


def test_requantising_after_new_weights_follows_them():
    m, m2 = model(seed=0), model(seed=1)
    q = quantize_int8(m)
    x = torch.randint(3, 6400, (2, 16), generator=torch.Generator().manual_seed(2))
    old_q = logprobs(q, x)
    q.load_state_dict(m2.state_dict())
    new_q = logprobs(q, x)
    err_new = float((new_q - logprobs(m2, x)).abs().max())
    assert err_new < 0.08 and float((new_q - old_q).abs().max()) > 10 * err_new
    # a state dict without the tied head's duplicate key: the head follows the embedding
    sd = {k: v for k, v in m.state_dict().items() if k != "lm_head.weight"}
    q.load_state_dict(sd)
    assert torch.allclose(logprobs(q, x), old_q, atol=1e-6)


def test_bad_state_dicts_are_refused():
    m = model()
    q = quantize_int8(m)
    sd = m.state_dict()
    with pytest.raises(RuntimeError, match="Missing key.*q_proj"):
        q.load_state_dict({k: v for k, v in sd.items() if "layers.0.self_attn.q_proj" not in k})
    with pytest.raises(RuntimeError, match=r"k_proj.weight: Int8DynamicLinear: weight of shape \(3, 3\)"):
        q.load_state_dict({**copy.copy(sd), "model.layers.1.self_attn.k_proj.weight": torch.zeros(3, 3)})
    with pytest.raises(TypeError, match="MiniMindForCausalLM"):
        quantize_int8(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="no weight yet"):
        Int8DynamicLinear(4, 4)(torch.zeros(1, 4))
