"""Helpers the RL tests share: tiny policies and their rollouts (what a RolloutWorker returns, without
the tokenizer), optimiser settings, and the math RL script run in a subprocess."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from contract.batch import RolloutBatch
from learner.config import OptimConfig
from minimind.config import preset
from minimind.generate import SamplingParams, generate
from minimind.model import MiniMindForCausalLM

ROOT = Path(__file__).resolve().parents[1]
V = 64
PAD, EOS = 0, 2


def tiny_model(seed: int = 0) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    return MiniMindForCausalLM(preset("tiny", vocab_size=V))


def tiny_prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, 8, (n,), generator=g).tolist()   # different lengths: real left padding
    return [torch.randint(3, V, (k,), generator=g).tolist() for k in lens]


def rollout(model, prompts: list[list[int]], G: int, temperature: float = 1.0, max_new_tokens: int = 8,
            seed: int = 0, uid_base: int = 0, rewards: torch.Tensor | None = None) -> RolloutBatch:
    """What a RolloutWorker returns, without the tokenizer: G samples per prompt from `model`."""
    out = generate(model, prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                  n=G, stop_token_ids=(EOS,), seed=seed), pad_id=PAD)
    B = out.response_ids.shape[0]
    uid = out.prompt_index + uid_base
    batch = RolloutBatch(
        prompt_ids=out.prompt_ids, prompt_mask=out.prompt_mask, response_ids=out.response_ids,
        response_mask=out.response_mask.float(), logprobs=out.logprobs.float(), group_uid=uid,
        prompt_keys=[f"p{int(u)}" for u in uid], answers=[""] * B, response_text=[""] * B,
        temperature=temperature)
    return batch if rewards is None else batch.with_rewards(rewards)


def optim(lr: float = 1e-3, **kw) -> OptimConfig:
    return OptimConfig(lr=lr, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, **kw)


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def perturbed(model, seed: int = 1, scale: float = 0.05):
    """A reference that differs from the policy, so the KL term has a gradient."""
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return ref


def mixed_rewards(B: int, G: int, seed: int = 0) -> torch.Tensor:
    """0/1 rewards with both values in every group (no zero-variance group)."""
    g = torch.Generator().manual_seed(seed)
    r = (torch.rand(B, generator=g) < 0.5).float().view(-1, G)
    r[:, 0], r[:, 1] = 1.0, 0.0
    return r.view(-1)


def p_target(model, prompts, target: int) -> float:
    """Exact expected reward: mean over prompts of p(first response token = target)."""
    with torch.no_grad():
        model.eval()
        out = generate(model, prompts, SamplingParams(max_new_tokens=1, temperature=0.0, n=1), pad_id=PAD)
        seq = torch.cat([out.prompt_ids, out.response_ids], 1)
        attn = torch.cat([out.prompt_mask, out.response_mask.long()], 1)
        logits = model(seq, attention_mask=attn).logits[:, -2].float()
        model.train()
    return float(logits.softmax(-1)[:, target].mean())


def run_grpo_math(run_dir: Path, address: str, *extra: str, ok: bool = True) -> subprocess.CompletedProcess:
    """The script in its own process (it shuts Ray down at the end), joining the session's Ray as it
    would join a cluster: starting a fresh local Ray per run costs several seconds on 2 cores."""
    args = [sys.executable, str(ROOT / "experiments" / "grpo_math.py"), f"--run-dir={run_dir}", f"--address={address}",
            "--bootstrap.preset=tiny", "--bootstrap.n-train=100", "--bootstrap.pretrain-steps=1",
            "--bootstrap.sft-steps=1", "--n-prompts=16", "--eval-size=8", "--no-dashboard", "--no-progress",
            "--rollout-workers=2", "--threads=1", "--rollout.sampling.n=2", "--rollout.sampling.max-new-tokens=8",
            "--driver.prompts-per-step=2", "--driver.checkpoint-every=1", *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(args, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    # timings vary; a run's last step has no periodic evaluation (the final one follows)
    return [{k: v for k, v in r.items() if not k.endswith(("seconds", "per_second", "time")) and not k.startswith("eval")}
            for r in rows if "reward_mean" in r]
