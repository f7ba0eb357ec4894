"""RolloutWorker: a policy copy + a generation engine, as a Ray actor.

    worker = RolloutActor.options(num_cpus=1, name="rollout-0").remote(RolloutConfig(...), model_cfg, tok_dir)
    gen_ref = worker.generate.remote(prompts, [weights_ref], version)

Weights travel as ONE object-store ref per policy version. It is passed wrapped in a list so
Ray does not fetch it on every call: the worker calls `ray.get` only when the version changed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import ray
import torch

from minimind.config import MiniMindConfig
from minimind.generate import SamplingParams, generate
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import MiniMindTokenizer

from .alloc import tune_malloc
from .batch import RolloutBatch


@dataclass
class RolloutConfig:
    group_size: int = 8
    """G: completions per prompt."""
    max_new_tokens: int = 64
    """Longest response in tokens."""
    temperature: float = 1.0
    """Sampling temperature (the learner recomputes logprobs at the same one)."""
    top_p: float = 1.0
    """Nucleus mass; 1 for RL so the logprobs are those of the full softmax."""
    top_k: int = 0
    """0 for RL (see top_p)."""
    engine: str = "native"
    """Generation backend: native (minimind.generate) or vllm."""
    seed: int = 0
    """Base seed; each call uses seed + call index so resamples differ."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"RolloutConfig.engine={self.engine!r}: choose one of {sorted(ENGINES)}")
        if self.group_size < 1:
            raise ValueError(f"RolloutConfig.group_size={self.group_size}: must be >= 1")


class NativeEngine:
    """minimind.generate on a MiniMindForCausalLM held by the worker."""

    name = "native"

    def __init__(self, model_cfg: MiniMindConfig, device: str):
        self.device = torch.device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = MiniMindForCausalLM(model_cfg).to(self.device, dtype).eval()

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)

    def generate(self, token_lists: list[list[int]], params: SamplingParams, pad_id: int):
        return generate(self.model, token_lists, params, pad_id=pad_id)


ENGINES: dict[str, Callable[..., Any]] = {"native": NativeEngine}


def register_engine(name: str, factory: Callable[..., Any]) -> None:
    ENGINES[name] = factory


class RolloutWorker:
    def __init__(self, cfg: RolloutConfig, model_cfg: MiniMindConfig | dict, tokenizer_dir: str,
                 device: str | None = None, worker_index: int = 0, threads: int = 0):
        tune_malloc()  # reuse freed logits/KV buffers instead of mmap/munmap per call (rollout/alloc.py)
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS to the actor's CPU share
        if isinstance(model_cfg, dict):
            model_cfg = MiniMindConfig.from_dict(model_cfg)
        self.cfg = cfg
        self.tok = MiniMindTokenizer.load(tokenizer_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.engine == "vllm":
            from .vllm_engine import VLLMEngine  # noqa: F401  (registers itself; optional dependency)
        self.engine = ENGINES[cfg.engine](model_cfg, device)
        self.version = -1
        self.calls = 0
        self.index = worker_index

    def set_weights(self, weights: list, version: int) -> float:
        """Load `weights[0]` (an ObjectRef, or a state dict) if `version` is new; seconds spent."""
        if version == self.version:
            return 0.0
        t0 = time.perf_counter()
        state = weights[0]
        if isinstance(state, ray.ObjectRef):
            state = ray.get(state)
        self.engine.load_weights(state)
        self.version = version
        return time.perf_counter() - t0

    def generate(self, prompts: list[dict], weights: list, version: int,
                 sampling: dict | None = None) -> RolloutBatch:
        """prompts: [{"prompt": chat-templated text, "key": str, "answer": str, "uid": int}].
        `sampling` overrides RolloutConfig fields for this call (e.g. greedy evaluation, n=1)."""
        sync_s = self.set_weights(weights, version)
        over = dict(sampling or {})
        n = over.pop("n", self.cfg.group_size)
        params = SamplingParams(
            max_new_tokens=over.pop("max_new_tokens", self.cfg.max_new_tokens),
            temperature=over.pop("temperature", self.cfg.temperature),
            top_p=over.pop("top_p", self.cfg.top_p), top_k=over.pop("top_k", self.cfg.top_k),
            n=n, stop_token_ids=(self.tok.eos_id,),
            seed=self.cfg.seed * 100_003 + self.index * 10_007 + self.calls)
        if over:
            raise ValueError(f"unknown sampling overrides: {sorted(over)}")
        self.calls += 1
        token_lists = [self.tok.encode(p["prompt"]) for p in prompts]
        out = self.engine.generate(token_lists, params, self.tok.pad_id)
        rep = lambda xs: [x for x in xs for _ in range(n)]  # noqa: E731  (row = prompt i, sample j)
        texts = self.tok.batch_decode([r[m.bool()].tolist() for r, m in zip(out.response_ids, out.response_mask)])
        return RolloutBatch(
            prompt_ids=out.prompt_ids, prompt_mask=out.prompt_mask,
            response_ids=out.response_ids, response_mask=out.response_mask.float(),
            logprobs=out.logprobs.float(),
            group_uid=torch.tensor(rep([int(p["uid"]) for p in prompts]), dtype=torch.long),
            prompt_keys=rep([p["key"] for p in prompts]), answers=rep([p.get("answer", "") for p in prompts]),
            response_text=texts, policy_version=version,
            meta={"generate_seconds": out.seconds, "weight_sync_seconds": sync_s, "new_tokens": out.new_tokens,
                  "worker": self.index, "engine": self.engine.name},
        )

    def ping(self) -> int:
        return self.version


RolloutActor = ray.remote(RolloutWorker)
