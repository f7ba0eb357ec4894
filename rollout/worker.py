"""RolloutWorker: a policy copy + a generation engine, as a Ray actor.

    worker = RolloutActor.options(num_cpus=1, name="rollout-0").remote(RolloutConfig(...), model_cfg, tok_dir)
    gen_ref = worker.generate.remote(prompts, [weights_ref], version, seed)

Weights travel as ONE object-store ref per policy version. It is passed wrapped in a list so
Ray does not fetch it on every call: the worker calls `ray.get` only when the version changed.
The seed of each call comes from the driver (derived from the run's --seed, the worker and the
call), so a restarted or resumed worker samples exactly what the original would have.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from minimind.config import MiniMindConfig
from minimind.generate import SamplingParams
from minimind.tokenizer import MiniMindTokenizer
from contract.batch import RolloutBatch
from runtime import tune_malloc

from .engines import EngineName, QuantizeName, make_engine


@dataclass
class RolloutConfig:

    sampling: SamplingParams = field(default_factory=SamplingParams)
    """How the policy samples: n is the group size G; temperature, top-p/top-k (1.0 / 0 for RL, so
    the logprobs are those of the full softmax). The tokenizer's end-of-turn token always stops a
    response; seeds come from the run's --seed."""
    engine: EngineName = "native"
    """Generation backend: native (minimind.generate) or vllm (optional dependency)."""
    quantize: QuantizeName = "none"
    """The rollout copy's weights: none, or int8 (native engine on CPU: dynamic int8 linear layers,
    re-quantised at each weight sync; the learner stays fp32). int8 samples from a slightly different
    policy, so it turns the truncated importance sampling on (--update.tis-cap 2.0 unless set)."""

    max_rows: int = 512
    """Rows (prompts x n) one engine call generates at most; larger calls (evaluations of the held-out
    set) go in chunks of whole prompts, which bounds the engine's KV cache and logits."""

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"--rollout.max-rows={self.max_rows}: must be >= 1")
        if self.sampling.seed is not None:
            raise ValueError("--rollout.sampling.seed: rollout seeds derive from the run's --seed (per worker "
                             "and call); set --seed instead")
        if self.quantize != "none" and self.engine != "native":
            raise ValueError(f"--rollout.quantize {self.quantize} is a native-engine option; --rollout.engine is "
                             f"{self.engine}: pass --rollout.engine native or --rollout.quantize none")
        if self.sampling.temperature <= 0:
            raise ValueError(f"--rollout.sampling.temperature={self.sampling.temperature}: RL samples its "
                             f"training rollouts, so it needs a temperature > 0 (greedy evaluation is separate)")


ADDITIVE_META = ("generate_seconds", "new_tokens", "engine_seconds", "env_seconds", "engine_calls")
"""Per-call totals in a batch's `meta`: the chunks of one call add up (other entries are row-weighted means)."""


def chunk_seed(seed: int | None, chunk: int) -> int | None:
    """The sampling seed of chunk `chunk` of a call seeded `seed`: the first chunk samples with the call's
    own seed (a call that fits in one chunk samples exactly as before chunking existed), each later chunk
    with its own seed mixed from (seed, chunk). Greedy decoding draws nothing, so its results do not depend
    on the chunking; sampled rows of later chunks differ from what one unchunked call would draw (another
    stream), reproducibly for a given seed and `max_rows`."""
    if seed is None or chunk == 0:
        return seed
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0]) >> 1


class RolloutWorker:
    def __init__(self, cfg: RolloutConfig, model_cfg: MiniMindConfig | dict, tokenizer_dir: str,
                 device: str | None = None, worker_index: int = 0, threads: int = 0):
        tune_malloc()  # reuse freed logits/KV buffers instead of mmap/munmap per call
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS to the actor's CPU share
        if isinstance(model_cfg, dict):
            model_cfg = MiniMindConfig.from_dict(model_cfg)
        self.cfg = cfg
        self.tok = MiniMindTokenizer.load(tokenizer_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.engine = make_engine(cfg.engine, model_cfg, device, cfg.quantize)
        self.version = -1
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

    def generate(self, prompts: list[dict], weights: list, version: int, seed: int,
                 sampling: dict | None = None, row_base: int = 0) -> RolloutBatch:
        """prompts: [{"prompt": chat-templated text, "key": str, "answer": str, "uid": int}].
        `sampling` overrides SamplingParams fields for this call (e.g. greedy evaluation, n=1); rows get
        the ids row_base, row_base + 1, ... (the driver's place for this call among the run's rows).
        A call of more than `max_rows` rows (prompts x n, e.g. an evaluation of 1,000 prompts x 8) is
        generated in chunks of whole prompts, one engine call each, so the engine never holds more than
        `max_rows` rows of KV cache and logits; see `chunk_seed` for what a chunk samples with."""
        sync_s = self.set_weights(weights, version)
        params = dataclasses.replace(self.cfg.sampling, **(sampling or {}), seed=seed,
                                     stop_token_ids=tuple(sorted({*self.cfg.sampling.stop_token_ids,
                                                                  self.tok.eos_id})))
        per = max(1, self.cfg.max_rows // params.n)
        parts = [self.rollout(prompts[at:at + per], dataclasses.replace(params, seed=chunk_seed(seed, c)), version,
                              row_base + at * params.n)
                 for c, at in enumerate(range(0, max(1, len(prompts)), per))]
        batch = parts[0] if len(parts) == 1 else RolloutBatch.concat(parts, pad_id=self.tok.pad_id)
        totals = {k: sum(b.meta[k] for b in parts) for k in parts[0].meta
                  if k in ADDITIVE_META and all(k in b.meta for b in parts)}
        return dataclasses.replace(batch, meta={**batch.meta, **totals, "weight_sync_seconds": sync_s,
                                                "engine_chunks": len(parts)})

    def rollout(self, prompts: list[dict], params: SamplingParams, version: int, row_base: int) -> RolloutBatch:
        """One engine call: `prompts` x params.n rows."""
        n = params.n
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
            response_text=texts, temperature=params.temperature, policy_version=version,
            row_id=row_base + torch.arange(len(texts)),
            meta={"generate_seconds": out.seconds, "new_tokens": out.new_tokens,
                  "worker": self.index, "engine": self.engine.name},
        )

    def ping(self) -> int:
        return self.version


RolloutActor = ray.remote(RolloutWorker)
