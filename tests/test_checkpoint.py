"""save_model / load_model / load_score_model / load_minimind_pth: exact round trips, strict errors."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from minimind.checkpoint import (CheckpointError, check_checkpoint, load_minimind_pth, load_model, load_score_model,
                                 read_checkpoint_config, save_model)
from minimind.config import preset
from minimind.model import MiniMindForCausalLM, MiniMindScoreModel


def _ids(cfg, B=2, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (B, T), generator=g)


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    return MiniMindForCausalLM(preset("tiny")).eval()


@pytest.mark.parametrize("name", ["tiny", "tiny-moe", "tiny-qk"])
def test_causal_lm_round_trip_bitwise(tmp_path, name):
    torch.manual_seed(1)
    m = MiniMindForCausalLM(preset(name)).eval()
    save_model(m, tmp_path / "ck", extra_meta={"step": 7, "stage": "sft"})
    m2 = load_model(tmp_path / "ck")
    ids = _ids(m.config)
    with torch.no_grad():
        assert torch.equal(m(ids).logits, m2(ids).logits)
    assert m2.config == m.config
    cfg, raw = read_checkpoint_config(tmp_path / "ck")
    assert raw["model_kind"] == "causal_lm" and raw["extra_meta"] == {"step": 7, "stage": "sft"}
    # also loadable by naming the safetensors file itself
    m3 = load_model(tmp_path / "ck" / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(m(ids).logits, m3(ids).logits)


def test_tied_weights_preserved(tmp_path, dense):
    save_model(dense, tmp_path)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    m2 = load_model(tmp_path)
    assert m2.lm_head.weight is m2.model.embed_tokens.weight
    assert m2.num_parameters() == dense.num_parameters()


def test_untied_round_trip(tmp_path):
    torch.manual_seed(2)
    m = MiniMindForCausalLM(preset("tiny", tie_word_embeddings=False)).eval()
    save_model(m, tmp_path)
    m2 = load_model(tmp_path)
    assert m2.lm_head.weight is not m2.model.embed_tokens.weight
    assert torch.equal(m2.lm_head.weight, m.lm_head.weight)


def test_score_model_round_trip(tmp_path):
    torch.manual_seed(3)
    m = MiniMindScoreModel(preset("tiny")).eval()
    with torch.no_grad():
        m.score.weight.normal_()
    save_model(m, tmp_path)
    m2 = load_score_model(tmp_path)
    ids = _ids(m.config)
    with torch.no_grad():
        assert torch.equal(m(ids), m2(ids))
    with pytest.raises(CheckpointError, match="load_score_model"):
        load_model(tmp_path)


def test_dtype_kept_and_overridden(tmp_path, dense):
    save_model(dense.to(torch.bfloat16), tmp_path)
    dense.float()
    assert load_model(tmp_path).model.embed_tokens.weight.dtype == torch.bfloat16
    assert load_model(tmp_path, dtype=torch.float32).model.embed_tokens.weight.dtype == torch.float32


def test_corrupt_file_names_file(tmp_path, dense):
    save_model(dense, tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)
    f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=str(f).replace("\\", "\\\\")):
        load_model(tmp_path)


@pytest.mark.parametrize("damage,expected", [
    ("cut in half", "truncated: its header lists tensors of"), ("cut in the header", "truncated, or not a safetensors"),
    ("4 bytes", "too short for a safetensors file"), ("random bytes", "not a safetensors file"),
    ("header not JSON", "header is not JSON"), ("offsets that do not add up", "its offsets give"),
    ("another model's weights", "unexpected tensor(s)")])
def test_check_checkpoint_reads_only_the_header_and_names_the_damage(tmp_path, dense, damage, expected):
    """What load_model refuses, check_checkpoint refuses with the same line, from config.json and the header."""
    assert check_checkpoint(save_model(dense, tmp_path)) == dense.config
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["model.norm.weight"]["data_offsets"][1] += 4
    shifted = json.dumps(header).encode()
    f.write_bytes({"cut in half": data[: len(data) // 2], "cut in the header": data[: n // 2],
                   "4 bytes": data[:4], "random bytes": bytes(torch.randint(0, 256, (len(data),)).tolist()),
                   "header not JSON": data[:8] + b"\xff" * n + data[8 + n:],
                   "offsets that do not add up": len(shifted).to_bytes(8, "little") + shifted + data[8 + n:],
                   "another model's weights": save_model(MiniMindForCausalLM(preset("tiny-qk")),
                                                         tmp_path / "other").joinpath("model.safetensors").read_bytes(),
                   }[damage])
    for check in (check_checkpoint, load_model):
        with pytest.raises(CheckpointError) as e:
            check(tmp_path)
        assert str(e.value).startswith(f"{f}: ") and expected in str(e.value), str(e.value)


def _resave(path: Path, mutate):
    from safetensors.torch import load_file, save_file
    sd = load_file(str(path))
    mutate(sd)
    save_file(sd, str(path))


def test_wrong_shape_names_tensor_and_shapes(tmp_path, dense):
    save_model(dense, tmp_path)
    key = "model.layers.1.self_attn.k_proj.weight"
    _resave(tmp_path / "model.safetensors", lambda sd: sd.__setitem__(key, torch.zeros(5, 64)))
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert key in msg and "(5, 64)" in msg and "(32, 64)" in msg and "model.safetensors" in msg


def test_missing_and_unexpected_tensor(tmp_path, dense):
    save_model(dense, tmp_path)
    key = "model.layers.0.mlp.up_proj.weight"
    _resave(tmp_path / "model.safetensors", lambda sd: sd.pop(key))
    with pytest.raises(CheckpointError, match="missing.*" + key.replace(".", r"\.")):
        load_model(tmp_path)
    save_model(dense, tmp_path)
    _resave(tmp_path / "model.safetensors", lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected.*model\.extra\.weight"):
        load_model(tmp_path)


def test_missing_dir_names_path(tmp_path):
    p = tmp_path / "does-not-exist"
    with pytest.raises(CheckpointError, match="does-not-exist"):
        load_model(p)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "empty")


def test_config_mismatch_is_shape_error(tmp_path, dense):
    save_model(dense, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"gate_proj\.weight.*\(128, 64\).*\(96, 64\)"):
        load_model(tmp_path)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pth_weights_only_refuses_code(tmp_path, dense):
    marker = tmp_path / "pwned"
    sd = dict(dense.state_dict())
    sd["evil"] = _Evil(marker)
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        torch.save(sd, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_minimind_pth(p)
    assert not marker.exists()


def test_pth_round_trip_and_errors(tmp_path, dense):
    sd = {k: v.half() for k, v in dense.state_dict().items()}  # MiniMind saves fp16, lm_head included
    torch.save(sd, tmp_path / "full_sft_64.pth")
    m = load_minimind_pth(tmp_path / "full_sft_64.pth", num_attention_heads=4)
    assert m.config.hidden_size == 64 and m.config.num_key_value_heads == 2
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert torch.equal(m.model.layers[0].mlp.up_proj.weight, sd["model.layers.0.mlp.up_proj.weight"].float())
    # explicit config, wrong shape
    bad = dict(sd)
    bad["model.layers.0.self_attn.v_proj.weight"] = torch.zeros(8, 64, dtype=torch.half)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth.*v_proj\.weight.*\(8, 64\).*\(32, 64\)"):
        load_minimind_pth(tmp_path / "bad.pth", dense.config)
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_minimind_pth(tmp_path / "nope.pth")
    (tmp_path / "trunc.pth").write_bytes((tmp_path / "full_sft_64.pth").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        load_minimind_pth(tmp_path / "trunc.pth")


def test_pth_untied_into_tied_config_refused(tmp_path, dense):
    sd = dict(dense.state_dict())
    sd["lm_head.weight"] = sd["lm_head.weight"].clone() + 1.0
    torch.save(sd, tmp_path / "untied.pth")
    with pytest.raises(CheckpointError, match=r"untied\.pth.*lm_head\.weight.*differs"):
        load_minimind_pth(tmp_path / "untied.pth", dense.config)
    m = load_minimind_pth(tmp_path / "untied.pth", num_attention_heads=4)  # inference sees it is untied
    assert not m.config.tie_word_embeddings and torch.equal(m.lm_head.weight, sd["lm_head.weight"])
