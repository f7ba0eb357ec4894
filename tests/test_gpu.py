"""CUDA paths (bf16 autocast learner, bf16 sampling engine). Skipped without a GPU."""
import pytest
import torch

from learner.config import OptimConfig
from learner.learner import Learner
from learner.stages import LMStage
from minimind.config import preset
from minimind.generate import SamplingParams, generate
from minimind.model import MiniMindForCausalLM

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_autocast_training_reduces_loss_on_cuda():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(preset("tiny", vocab_size=128))
    learner = Learner(model, LMStage(), OptimConfig(lr=3e-3, warmup_steps=0), device="cuda")
    ids = torch.randint(3, 128, (8, 32))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    first = learner.train_step(batch)["loss"]
    for _ in range(20):
        last = learner.train_step(batch)["loss"]
    assert last < first - 0.5


def test_bf16_generation_runs_and_logits_track_fp32_on_cuda():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(preset("tiny", vocab_size=128)).cuda().eval()
    ids = torch.randint(3, 128, (2, 16), device="cuda")
    with torch.no_grad():
        ref = model(ids).logits.float()
        low = model.to(torch.bfloat16)(ids).logits.float()
    assert (ref - low).abs().max() < 0.05 * ref.abs().max()
    out = generate(model, [[5, 6, 7], [9, 10, 11, 12]], SamplingParams(max_new_tokens=8, n=2, seed=0))
    assert out.response_ids.shape == (4, 8) and torch.isfinite(out.logprobs).all()
