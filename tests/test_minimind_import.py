"""MiniMind `.pth` import is exact for every published size, v2 and MiniMind-3, dense and MoE.

The state dicts come from `minimind_reference` (MiniMind's module names and forward, written for the
tests) at the full preset sizes; logits must agree to < 1e-5. Config values that shapes cannot tell
come from a config.json next to the file, from arguments, or from the generation's defaults.
"""
from __future__ import annotations

import json

import pytest
import torch
from minimind_reference import RefConfig, RefMiniMindForCausalLM

from minimind.checkpoint import CheckpointError, load_minimind_pth, load_model
from minimind.config import preset

# minimind2-small at its full size; the others with each preset's structure (heads / kv heads /
# head_dim, qk-norm, experts, routing) at 2 layers and a narrower FFN to keep the test at ~5 s
# (their full parameter counts are checked on the meta device in test_model.py)
REF = {
    "minimind2-small": RefConfig(512, 8, 8, 2, 1408),
    "minimind2": RefConfig(768, 2, 8, 2, 512),
    "minimind2-moe": RefConfig(640, 2, 8, 2, 256, use_moe=True),
    "minimind3": RefConfig(768, 2, 8, 4, 512, generation=3, rms_norm_eps=1e-6),
    "minimind3-moe": RefConfig(768, 2, 8, 4, 256, generation=3, rms_norm_eps=1e-6, use_moe=True,
                               n_shared_experts=0, num_experts_per_tok=1),
}
STRUCTURE = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "qk_norm",
             "rms_norm_eps", "use_moe")


def _ref(name: str, **kw) -> RefMiniMindForCausalLM:
    torch.manual_seed(0)
    cfg = REF[name]
    return RefMiniMindForCausalLM(RefConfig(**{**cfg.__dict__, **kw})).eval()


def _ids(T: int = 24) -> torch.Tensor:
    return torch.randint(3, 6400, (2, T), generator=torch.Generator().manual_seed(1))


def _max_diff(ref, ours) -> float:
    ids = _ids()
    with torch.no_grad():
        return (ref(ids) - ours(ids).logits).abs().max().item()


@pytest.mark.parametrize("name", list(REF))
def test_pth_import_exact_at_full_size(tmp_path, name, one_thread):
    ref = _ref(name)
    torch.save(ref.state_dict(), tmp_path / "full_sft_768.pth")
    ours = load_minimind_pth(tmp_path / "full_sft_768.pth")  # nothing passed: shapes + generation defaults
    want = preset(name)
    for f in STRUCTURE:
        assert getattr(ours.config, f) == getattr(want, f), f
    assert (ours.config.num_hidden_layers, ours.config.intermediate_size) == (
        REF[name].num_hidden_layers, REF[name].intermediate_size)
    if want.use_moe:
        for f in ("n_routed_experts", "n_shared_experts", "num_experts_per_tok", "norm_topk_prob"):
            assert getattr(ours.config, f) == getattr(want, f), f
    assert ours.num_parameters() == sum(p.numel() for p in {id(p): p for p in ref.parameters()}.values())
    assert _max_diff(ref, ours) < 1e-5


def test_minimind3_moe_needs_top1_weight_one_and_eps(tmp_path, one_thread):
    """The two silent errors of the old import, measured: they are large, so the test above has teeth."""
    ref = _ref("minimind3-moe", num_hidden_layers=1)
    torch.save(ref.state_dict(), tmp_path / "m.pth")
    v2_routing = load_minimind_pth(tmp_path / "m.pth", norm_topk_prob=False)  # weight p instead of 1
    assert _max_diff(ref, v2_routing) > 1e-2
    wrong_eps = load_minimind_pth(tmp_path / "m.pth", rms_norm_eps=1e-5)
    assert _max_diff(ref, wrong_eps) > 1e-4


def _tiny(generation: int, **kw) -> RefConfig:
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, generation=generation)
    return RefConfig(**{**base, **kw})


def test_config_json_next_to_pth_minimind3(tmp_path):
    """A MiniMind-3 config.json (its own key names) decides eps, theta and routing."""
    torch.manual_seed(2)
    rc = _tiny(3, rms_norm_eps=1e-3, rope_theta=1e4, use_moe=True, n_shared_experts=0,
               num_experts_per_tok=2, norm_topk_prob=False)
    ref = RefMiniMindForCausalLM(rc).eval()
    torch.save(ref.state_dict(), tmp_path / "m.pth")
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "minimind", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "rms_norm_eps": 1e-3,
        "rope_theta": 1e4, "use_moe": True, "num_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 96, "norm_topk_prob": False, "router_aux_loss_coef": 5e-4,
        "inference_rope_scaling": False, "vocab_size": 6400}))
    ours = load_model(tmp_path / "m.pth")
    assert (ours.config.rms_norm_eps, ours.config.rope_theta, ours.config.num_experts_per_tok) == (1e-3, 1e4, 2)
    assert ours.config.norm_topk_prob is False and ours.config.n_shared_experts == 0
    assert _max_diff(ref, ours) < 1e-5


def test_config_json_v2_top1_moe_and_arguments_override(tmp_path):
    """MiniMind v2 never renormalised a single expert's weight: its config with k=1 means weight p."""
    torch.manual_seed(3)
    rc = _tiny(2, use_moe=True, num_experts_per_tok=1, rms_norm_eps=1e-5)
    ref = RefMiniMindForCausalLM(rc).eval()
    torch.save(ref.state_dict(), tmp_path / "m.pth")
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "intermediate_size": 96, "use_moe": True, "n_routed_experts": 4, "n_shared_experts": 1,
           "num_experts_per_tok": 1, "norm_topk_prob": True, "rms_norm_eps": 1e-5, "seq_aux": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = load_minimind_pth(tmp_path / "m.pth")
    assert ours.config.norm_topk_prob is False
    assert _max_diff(ref, ours) < 1e-5
    # an explicit argument wins over the file
    assert load_minimind_pth(tmp_path / "m.pth", rms_norm_eps=1e-3).config.rms_norm_eps == 1e-3
    # a shape the file contradicts is an error naming both values
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_size": 128}))
    with pytest.raises(CheckpointError, match=r"hidden_size=128.*hidden_size=64"):
        load_minimind_pth(tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="none.json"):
        load_minimind_pth(tmp_path / "m.pth", config_json=tmp_path / "none.json")
    with pytest.raises(CheckpointError, match="rms_eps"):  # a misspelt field is not ignored
        load_minimind_pth(tmp_path / "m.pth", rms_eps=1.0)


def test_v2_inference_rope_scaling_is_refused(tmp_path):
    torch.manual_seed(4)
    torch.save(RefMiniMindForCausalLM(_tiny(2)).state_dict(), tmp_path / "m.pth")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "inference_rope_scaling": True}))
    with pytest.raises(CheckpointError, match="inference_rope_scaling"):
        load_minimind_pth(tmp_path / "m.pth", num_attention_heads=4)
