"""LoRA: only adapters train, starts at the base model, merge is exact, save/load round trips."""
from __future__ import annotations

import pytest
import torch

from minimind.checkpoint import load_model, save_model
from minimind.config import preset
from minimind.lora import (LoRAConfig, LoRAError, LoRALinear, apply_lora, load_lora, load_lora_state_dict,
                           lora_parameters, lora_state_dict, merge_lora, save_lora)
from minimind.model import MiniMindForCausalLM


def _model(name="tiny", seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(preset(name)).eval()


def _ids(B=2, T=10, seed=0):
    return torch.randint(0, 6400, (B, T), generator=torch.Generator().manual_seed(seed))


def _train(model, steps=3):
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    ids = _ids(seed=1)
    model.train()
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_only_adapters_trainable_and_initial_output_equal():
    m = _model()
    ids = _ids()
    with torch.no_grad():
        base = m(ids).logits
    apply_lora(m, LoRAConfig(rank=4, alpha=8))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == len(lora_parameters(m)) == 2 * 7 * m.config.num_hidden_layers
    assert isinstance(m.model.layers[0].self_attn.q_proj, LoRALinear)
    # base keys unchanged: the base state dict still loads into a plain model
    plain_keys = set(_model().state_dict())
    assert plain_keys <= set(m.state_dict())
    with torch.no_grad():
        assert torch.equal(m(ids).logits, base)


def test_training_changes_output_and_base_frozen():
    m = apply_lora(_model(), LoRAConfig(rank=4))
    w0 = m.model.layers[0].self_attn.q_proj.weight.clone()
    emb0 = m.model.embed_tokens.weight.clone()
    ids = _ids()
    with torch.no_grad():
        before = m(ids).logits
    _train(m)
    with torch.no_grad():
        after = m(ids).logits
    assert (after - before).abs().max() > 1e-3
    assert torch.equal(m.model.layers[0].self_attn.q_proj.weight, w0)
    assert torch.equal(m.model.embed_tokens.weight, emb0)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_merge_equals_unmerged(name, tmp_path):
    m = apply_lora(_model(name), LoRAConfig(rank=4, alpha=16, dropout=0.1))
    _train(m)
    ids = _ids()
    with torch.no_grad():
        lora_out = m(ids).logits
    merge_lora(m)
    assert not any(isinstance(x, LoRALinear) for x in m.modules())
    assert set(m.state_dict()) == set(_model(name).state_dict())
    assert all(p.requires_grad for p in m.parameters())
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, lora_out, atol=1e-5, rtol=0)
    # the merged model is a plain checkpoint again
    save_model(m, tmp_path)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path)(ids).logits, m(ids).logits)


def test_save_load_round_trip(tmp_path):
    m = apply_lora(_model(), LoRAConfig(rank=2, alpha=4, target_modules=("q_proj", "v_proj")))
    _train(m)
    ids = _ids()
    with torch.no_grad():
        want = m(ids).logits
    save_lora(m, tmp_path / "adapter.safetensors")
    # into a fresh base: config comes from the file's metadata
    m2 = load_lora(_model(), tmp_path / "adapter.safetensors")
    assert len(lora_parameters(m2)) == 2 * 2 * m.config.num_hidden_layers
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, want)
    sd = lora_state_dict(m2)
    assert all(".lora_" in k for k in sd)


def test_strict_errors(tmp_path):
    m = apply_lora(_model(), LoRAConfig(rank=2))
    sd = dict(lora_state_dict(m))
    k = "model.layers.0.self_attn.q_proj.lora_A.weight"
    bad = dict(sd)
    bad[k] = torch.zeros(3, 64)
    with pytest.raises(LoRAError, match=r"q_proj\.lora_A\.weight.*\(3, 64\).*\(2, 64\)"):
        load_lora_state_dict(m, bad)
    missing = dict(sd)
    missing.pop(k)
    with pytest.raises(LoRAError, match="missing.*" + k.replace(".", r"\.")):
        load_lora_state_dict(m, missing)
    with pytest.raises(LoRAError, match="unexpected"):
        load_lora_state_dict(m, {**sd, "model.norm.weight": torch.ones(64)})
    with pytest.raises(LoRAError, match="already"):
        apply_lora(m)
    with pytest.raises(LoRAError, match="no nn.Linear"):
        apply_lora(_model(), LoRAConfig(target_modules=("nope",)))
    with pytest.raises(ValueError, match="merge_lora"):
        save_model(m, tmp_path)
    with pytest.raises(LoRAError, match="missing.pt"):
        load_lora(m, tmp_path / "missing.pt")
