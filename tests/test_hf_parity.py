"""export_hf -> transformers gives our logits (Llama, Qwen3, YaRN); import_hf and MiniMind .pth round trips."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minimind.checkpoint import export_hf, import_hf, load_minimind_pth  # noqa: E402
from minimind.config import preset  # noqa: E402
from minimind.model import MiniMindForCausalLM, positions_from_mask, rope_inv_freq  # noqa: E402

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "beta_fast": 32, "beta_slow": 1}
CASES = {
    "tiny": (dict(), "LlamaForCausalLM"),
    "tiny-qk": (dict(), "Qwen3ForCausalLM"),
    "tiny-yarn": (dict(rope_scaling=YARN), "LlamaForCausalLM"),
    "tiny-qk-yarn-untied": (dict(rope_scaling={**YARN, "attention_factor": 1.0}, tie_word_embeddings=False),
                            "Qwen3ForCausalLM"),
}


def _preset(case):
    return preset("tiny-qk" if case.startswith("tiny-qk") else "tiny", **CASES[case][0])


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    case = request.param
    torch.manual_seed(0)
    ours = MiniMindForCausalLM(_preset(case)).eval()
    with torch.no_grad():  # non-trivial norm weights so the RMSNorm / qk-norm mapping is exercised
        for n, p in ours.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp(case)
    export_hf(ours, d)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    return case, ours, hf, d


def test_architecture_and_config(exported):
    case, ours, hf, d = exported
    assert type(hf).__name__ == CASES[case][1]
    raw = json.loads((d / "config.json").read_text())
    assert raw["architectures"] == [CASES[case][1]]
    assert raw["rope_theta"] == ours.config.rope_theta
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == ours.config.eos_token_id
    # transformers built the very same rotary frequencies and attention scale
    inv, scale = rope_inv_freq(ours.config)
    torch.testing.assert_close(hf.model.rotary_emb.inv_freq.float(), inv, rtol=1e-6, atol=0)
    assert hf.model.rotary_emb.attention_scaling == pytest.approx(scale)


def test_logits_match(exported):
    case, ours, hf, _ = exported
    ids = torch.randint(0, ours.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(ids).logits, hf(ids).logits
    assert (a - b).abs().max().item() < 1e-4


def test_logits_match_left_padded(exported):
    case, ours, hf, _ = exported
    ids = torch.randint(3, ours.config.vocab_size, (3, 24), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    mask[2, :3] = 0
    ids = ids.masked_fill(mask == 0, ours.config.pad_token_id)
    pos = positions_from_mask(mask)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).logits
        b = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    assert (a[real] - b[real]).abs().max().item() < 1e-4


def test_import_hf_round_trip(exported):
    case, ours, _, d = exported
    back = import_hf(d)
    assert back.config.qk_norm == ours.config.qk_norm
    assert back.config.tie_word_embeddings == ours.config.tie_word_embeddings
    ids = torch.randint(0, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ours(ids).logits)


@pytest.mark.parametrize("name,drop_lm_head", [("tiny", True), ("tiny", False), ("tiny-qk", True),
                                                ("tiny-moe", False)])
def test_minimind_pth_inferred_config(tmp_path, name, drop_lm_head):
    torch.manual_seed(4)
    ours = MiniMindForCausalLM(preset(name)).eval()
    sd = dict(ours.state_dict())
    if drop_lm_head:
        sd.pop("lm_head.weight")
    torch.save(sd, tmp_path / "model.pth")
    # tiny presets have 4 heads: the (non qk-norm) inference needs that hint; qk-norm infers it
    hint = None if ours.config.qk_norm else 4
    # eps is not in the shapes: qk-norm means MiniMind-3's 1e-6 unless told (the tiny preset has 1e-5)
    m = load_minimind_pth(tmp_path / "model.pth", num_attention_heads=hint, rms_norm_eps=ours.config.rms_norm_eps)
    for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "intermediate_size", "qk_norm", "use_moe", "n_routed_experts", "n_shared_experts",
              "tie_word_embeddings"):
        assert getattr(m.config, f) == getattr(ours.config, f), f
    ids = torch.randint(0, 6400, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(m(ids).logits, ours(ids).logits)


MOE_CASES = {  # preset overrides -> transformers architecture computing the same function
    "v3-top1": (dict(qk_norm=True, n_shared_experts=0, num_experts_per_tok=1, rms_norm_eps=1e-6),
                "Qwen3MoeForCausalLM"),
    "v3-top2-unnormed": (dict(qk_norm=True, n_shared_experts=0, num_experts_per_tok=2, norm_topk_prob=False),
                         "Qwen3MoeForCausalLM"),
    "v2-shared": (dict(), "Qwen2MoeForCausalLM"),
    "v2-two-shared": (dict(n_shared_experts=2, num_experts_per_tok=1), "Qwen2MoeForCausalLM"),
    "v2-no-shared": (dict(n_shared_experts=0), "Qwen2MoeForCausalLM"),
}


@pytest.mark.parametrize("case", list(MOE_CASES))
def test_moe_export_logits_match_transformers(tmp_path, case):
    kw, arch = MOE_CASES[case]
    torch.manual_seed(7)
    ours = MiniMindForCausalLM(preset("tiny-moe", **kw)).eval()
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
            elif "gate.weight" in n:
                p.mul_(20)  # decisive routing: many tokens change experts if the weights were wrong
    export_hf(ours, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    ids = torch.randint(0, 6400, (3, 40), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids).logits).abs().max().item()
    assert diff < 1e-5, diff
    if arch == "Qwen3MoeForCausalLM":  # and back
        back = import_hf(tmp_path)
        with torch.no_grad():
            assert torch.equal(back(ids).logits, ours(ids).logits)


def test_moe_export_refused_without_equivalent(tmp_path):
    m = MiniMindForCausalLM(preset("tiny-moe", qk_norm=True))  # qk-norm + a shared expert
    with pytest.raises(NotImplementedError, match="shared"):
        export_hf(m, tmp_path / "x")
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_tokenizer_copied(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text("{}")
    export_hf(MiniMindForCausalLM(preset("tiny")), tmp_path / "hf", tokenizer_dir=tok)
    assert (tmp_path / "hf" / "tokenizer.json").exists() and (tmp_path / "hf" / "tokenizer_config.json").exists()


def test_export_bf16(tmp_path):
    torch.manual_seed(6)
    ours = MiniMindForCausalLM(preset("tiny")).eval()
    export_hf(ours, tmp_path, dtype=torch.bfloat16)
    back = import_hf(tmp_path)
    assert back.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(back.model.embed_tokens.weight, ours.model.embed_tokens.weight.bfloat16())
