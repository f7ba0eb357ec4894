"""The MiniMind model: preset sizes, config validation, padding, MoE routing, loss, KV cache, YaRN, score model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minimind.config import ConfigError, MiniMindConfig, preset
from minimind.model import (KVCache, MiniMindForCausalLM, MiniMindScoreModel, MoEFeedForward, RMSNorm,
                            attention_plan, build_attn_mask, decode_attention, last_token_values, rope_inv_freq)

TINY = ["tiny", "tiny-qk", "tiny-moe"]


def _model(name, seed=0, **kw):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(preset(name, **kw)).eval()


def _ids(B, T, seed=0, low=3):
    return torch.randint(low, 6400, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- sizes and config
@pytest.mark.parametrize("name,count", [("minimind2-small", 25_829_888), ("minimind2", 104_030_976),
                                        ("minimind2-moe", 145_029_760), ("minimind3", 63_912_192),
                                        ("minimind3-moe", 198_416_640)])
def test_preset_parameter_counts(name, count):
    with torch.device("meta"):
        m = MiniMindForCausalLM(preset(name))
    assert m.num_parameters() == count
    assert m.lm_head.weight is m.model.embed_tokens.weight


@pytest.mark.parametrize("kw,field", [
    (dict(hidden_size=100, num_attention_heads=8), "num_attention_heads"),
    (dict(num_attention_heads=8, num_key_value_heads=3), "num_key_value_heads"),
    (dict(rope_scaling={"type": "linear", "factor": 2}), "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factor": 0.5}), "rope_scaling"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        MiniMindConfig(**kw)


# ----------------------------------------------------------------------------- padding
@pytest.mark.parametrize("name", TINY)
def test_left_padding_invariance(name):
    m = _model(name)
    prompt = _ids(1, 7, seed=1)
    other = _ids(1, 11, seed=2)
    pad = torch.full((1, 4), m.config.pad_token_id)
    batch = torch.cat([torch.cat([pad, prompt], 1), other], 0)
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    with torch.no_grad():
        alone = m(prompt).logits[:, -1]
        batched = m(batch, attention_mask=mask).logits
    torch.testing.assert_close(batched[0, -1:], alone, atol=1e-5, rtol=0)
    # every real position of the padded row, not only the last
    with torch.no_grad():
        torch.testing.assert_close(batched[0, 4:], m(prompt).logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched[1], m(other).logits[0], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- MoE
def _naive_moe(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    B, T, H = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        for t in range(T):
            xt = x[b, t]
            scores = (moe.gate.weight @ xt).softmax(-1)
            w, idx = scores.topk(moe.gate.top_k)
            if moe.gate.norm_topk_prob:  # for k = 1 too (MiniMind-3): the weight is then 1
                w = w / w.sum()
            y = sum(w[j] * moe.experts[int(idx[j])](xt) for j in range(len(idx)))
            for s in moe.shared_experts:
                y = y + s(xt)
            out[b, t] = y
    return out


@pytest.mark.parametrize("kw", [dict(), dict(norm_topk_prob=False), dict(num_experts_per_tok=1, n_shared_experts=0),
                                dict(num_experts_per_tok=1, norm_topk_prob=False)])
def test_moe_dispatch_matches_naive_loop(kw):
    m = _model("tiny-moe", **kw)
    moe = m.model.layers[0].mlp
    x = torch.randn(2, 9, m.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(moe(x), _naive_moe(moe, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seq_aux", [True, False])
def test_moe_aux_loss_and_gate_gradient(seq_aux):
    m = _model("tiny-moe", seq_aux=seq_aux).train()
    ids = _ids(2, 12)
    out = m(ids, labels=ids)
    assert out.aux_loss.item() > 0
    out.aux_loss.backward(retain_graph=True)  # the load-balance loss alone reaches the router
    for layer in m.model.layers:
        g = layer.mlp.gate.weight.grad
        assert g is not None and g.abs().sum() > 0
    m.zero_grad()
    out.loss.backward()
    assert m.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert m.eval()(ids).aux_loss.item() == 0.0


# ----------------------------------------------------------------------------- loss
@pytest.mark.parametrize("name", ["tiny", "tiny-qk"])
def test_labels_loss_is_shifted_ce(name):
    m = _model(name)
    ids = _ids(2, 10)
    labels = ids.clone()
    labels[0, :4] = -100
    out = m(ids, labels=labels)
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1),
                             ignore_index=-100)
    torch.testing.assert_close(out.loss, manual, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("sl", [slice(-1, None), slice(-5, -1), slice(2, 4)])
def test_logits_slice_runs_the_head_on_those_positions_only(sl):
    m = _model("tiny")
    ids = _ids(3, 9)
    full = m(ids).logits
    part = m(ids, logits_slice=sl)
    assert part.logits.shape == full[:, sl].shape and part.hidden_states.shape[1] == 9
    torch.testing.assert_close(part.logits, full[:, sl], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        m(ids, labels=ids, logits_slice=sl)


# ----------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("batch", [2, 32])  # 32 rows x 4 heads x 16 dims: the decode_attention path
def test_kv_cache_incremental_equals_full(name, batch):
    m = _model(name)
    ids = _ids(batch, 14, seed=4)
    with torch.no_grad():
        full = m(ids).logits
        cache = KVCache(m.config, batch, 16, device="cpu", dtype=torch.float32)
        step = [m(ids[:, :6], cache=cache).logits]
        for t in range(6, 14):
            step.append(m(ids[:, t:t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(step, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["tiny", "tiny-qk"])
@pytest.mark.parametrize("batch", [2, 32])
def test_kv_cache_left_padded(name, batch):
    m = _model(name)
    ids = _ids(batch, 12, seed=5)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        full = m(ids, attention_mask=mask).logits
        cache = KVCache(m.config, batch, 12, device="cpu", dtype=torch.float32)
        step = [m(ids[:, :7], attention_mask=mask[:, :7], cache=cache).logits]
        for t in range(7, 12):
            step.append(m(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits)
    got = torch.cat(step, 1)
    real = mask.bool()
    torch.testing.assert_close(got[real], full[real], atol=1e-5, rtol=0)


def test_unpadded_batches_take_the_maskless_path_with_the_same_logits():
    ones = torch.ones(2, 10, dtype=torch.long)
    assert attention_plan(ones, 2, 0, 10, "cpu") == (None, True)        # full sequence: causal kernel
    assert attention_plan(ones, 2, 9, 1, "cpu") == (None, False)        # one decode query sees all keys
    mask, causal = attention_plan(ones, 2, 6, 4, "cpu")                  # chunk after a cache: explicit
    assert not causal and torch.equal(mask, build_attn_mask(ones, 4))
    padded = ones.clone()
    padded[1, :3] = 0
    mask, causal = attention_plan(padded, 2, 0, 10, "cpu")
    assert not causal and torch.equal(mask, build_attn_mask(padded, 10))

    m = _model("tiny-qk")
    ids = _ids(2, 10, seed=7)
    with torch.no_grad():
        fast = m(ids, attention_mask=ones).logits
        # row 0 of a batch whose other row is padded goes through the explicit-mask path
        masked = m(ids, attention_mask=padded).logits
        cache = KVCache(m.config, 2, 10, device="cpu", dtype=torch.float32)
        chunks = [m(ids[:, :6], attention_mask=ones[:, :6], cache=cache).logits,
                  m(ids[:, 6:], attention_mask=ones, cache=cache).logits]
    torch.testing.assert_close(fast[0], masked[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(chunks, 1), fast, atol=1e-5, rtol=0)


@pytest.mark.parametrize("heads,kv", [(8, 2), (4, 4), (6, 1)])
def test_decode_attention_equals_sdpa(heads, kv):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(5, heads, 1, 16, generator=g)
    k, v = torch.randn(5, kv, 11, 16, generator=g), torch.randn(5, kv, 11, 16, generator=g)
    mask = torch.rand(5, 1, 1, 11, generator=g) > 0.3
    mask[..., -1] = True  # the query's own key
    for m in (mask, None):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=kv != heads)
        torch.testing.assert_close(decode_attention(q, k, v, m), want, atol=1e-6, rtol=1e-5)


def test_rmsnorm_fused_path_equals_the_explicit_one():
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 7, 24) * 4
    xf = x.double()
    want = (norm.weight.double() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).float()
    torch.testing.assert_close(norm(x), want, atol=1e-6, rtol=1e-6)                  # fp32: fused kernel
    torch.testing.assert_close(norm.to(torch.bfloat16)(x.bfloat16()).float(), want, atol=0.05, rtol=0.02)


# ----------------------------------------------------------------------------- YaRN
def test_yarn_changes_only_low_frequencies():
    rs = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
          "beta_slow": 1}
    base_cfg = preset("tiny")
    yarn_cfg = preset("tiny", rope_scaling=rs)
    inv0, s0 = rope_inv_freq(base_cfg)
    inv1, s1 = rope_inv_freq(yarn_cfg)
    dim, theta = base_cfg.head_dim, base_cfg.rope_theta

    def corr(n_rot):
        return dim * math.log(4096 / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

    low, high = max(math.floor(corr(32)), 0), min(math.ceil(corr(1)), dim - 1)
    assert 0 < low < high < dim // 2  # the test exercises all three regions
    torch.testing.assert_close(inv1[:low + 1], inv0[:low + 1], rtol=1e-6, atol=0)    # extrapolated: unchanged
    torch.testing.assert_close(inv1[high:], inv0[high:] / 8.0, rtol=1e-6, atol=0)    # interpolated by factor
    mid = slice(low + 1, high)
    assert torch.all(inv1[mid] < inv0[mid]) and torch.all(inv1[mid] > inv0[mid] / 8.0)
    assert s0 == 1.0 and s1 == pytest.approx(0.1 * math.log(8.0) + 1.0)
    assert rope_inv_freq(preset("tiny", rope_scaling={**rs, "attention_factor": 1.0}))[1] == 1.0
    # and the model uses them: positions beyond the first change the logits
    m0, m1 = _model("tiny"), _model("tiny", rope_scaling=rs)
    ids = _ids(1, 8)
    with torch.no_grad():
        assert not torch.allclose(m0(ids).logits, m1(ids).logits)


# ----------------------------------------------------------------------------- score model
def test_score_model_shape_and_last_token_values():
    torch.manual_seed(0)
    sm = MiniMindScoreModel(preset("tiny")).eval()
    ids = _ids(3, 9)
    with torch.no_grad():
        assert torch.count_nonzero(sm(ids)) == 0  # zero-initialised head
        sm.score.weight.normal_()
        v = sm(ids)
    assert v.shape == (3, 9) and v.dtype == torch.float32
    left = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9, [0] * 8 + [1]])
    right = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0, 0], [1] * 9, [1] + [0] * 8])
    assert torch.equal(last_token_values(v, left), v[:, 8])
    assert torch.equal(last_token_values(v, right), torch.stack([v[0, 3], v[1, 8], v[2, 0]]))
    # a left-padded row scores like the same text alone
    with torch.no_grad():
        padded = sm(ids, attention_mask=left)
        alone = sm(ids[:1, 2:])
    torch.testing.assert_close(last_token_values(padded, left)[0], alone[0, -1], atol=1e-5, rtol=0)
