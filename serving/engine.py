"""Continuous batching engine for one replica: every request in flight shares one decode step.

A background thread owns the model. Each loop it (1) admits waiting requests up to
`max_batch_size` rows (a request with n choices takes n rows) and prefills them together,
(2) samples one token for every row, (3) hands the new text to each request's sink, and
(4) runs one decode step for all rows through a KV cache that rows join and leave
(`serve.batch_cache`). Rows that finish are masked, and dropped once they are a quarter of the
batch. Weights pushed with `load_weights` are swapped in between two steps.

Greedy rows take `logp.max(-1).indices` of the unscaled log-softmax, exactly as
`minimind.generate.generate` does, so a request's greedy answer does not depend on what else is
in the batch. Sampled rows each own a `torch.Generator` (seeded from the request's `seed` and the
choice index), so a seeded request is reproducible under any load.
"""
from __future__ import annotations

import collections
import random
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .batch_cache import BatchCache, empty_kv, repeat_rows
from .detok import ChoiceText, token_bytes
from .protocol import Completion


@dataclass
class EngineConfig:
    max_batch_size: int = 64
    """Most rows (choices) decoded in one step; waiting requests join as rows free up."""
    batch_wait_ms: float = 10.0
    """When the engine is idle, how long the first request waits for others to share its prefill."""
    threads: int = 0
    """torch intra-op threads of the engine (0 = the replica's --num-cpus, at least 1)."""


@dataclass
class Update:
    """What one choice produced since the last update (or, for a non-streamed request, in all)."""

    index: int
    text: str
    logprobs: list[tuple[int, float, list[tuple[int, float]]]]
    """(token id, logprob, [(alternative id, logprob), ...]) per token of this update."""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    prompt_logprobs: list[tuple[int, float | None, list[tuple[int, float]]]] | None = None
    """With the choice's first update, when the request scores its prompt (echo + logprobs): one entry
    per prompt token, the first with logprob None (nothing precedes it)."""


Sink = Callable[[list[Update]], None]


@dataclass
class Pending:
    req: Completion
    sink: Sink
    rows_left: int = 0
    cancelled: bool = False
    prompt_logprobs: list | None = None


@dataclass
class _Row:
    owner: Pending
    index: int
    text: ChoiceText
    gen: torch.Generator | None
    count: int = 0
    dead: bool = False
    logprobs: list = field(default_factory=list)
    sent_prompt: bool = False


class Ticket:
    """Returned by `submit`: lets the caller stop a request whose client went away."""

    def __init__(self, r: Pending):
        self._r = r

    def cancel(self) -> None:
        self._r.cancelled = True


class QueuedEngine:
    """What both engines share: requests and weight pushes arrive through one condition-guarded queue,
    and a background thread (the subclass's `_loop`) owns the model. Weights are swapped in by that
    thread, between two engine calls; a push that does not load is reported and the old weights stay."""

    def __init__(self, cfg: EngineConfig, version: int, thread_name: str):
        self.cfg, self.version = cfg, version
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.served = 0
        self.weight_errors: list[str] = []
        self._queue: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition()
        self._weights: tuple[dict, int, Callable[[int, str | None], None] | None] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)

    # ------------------------------------------------------------------ public
    def submit(self, req: Completion, sink: Sink) -> Ticket:
        if req.n > self.cfg.max_batch_size:
            raise ValueError(f"n={req.n} exceeds max_batch_size={self.cfg.max_batch_size}")
        r = Pending(req, sink, rows_left=req.n)
        with self._cond:
            self._queue.append(r)
            self._cond.notify()
        return Ticket(r)

    def load_weights(self, state: dict[str, torch.Tensor], version: int,
                     done: Callable[[int, str | None], None] | None = None) -> None:
        """Swap in `state` between two engine calls; `done(version, error)` is called after."""
        with self._cond:
            self._weights = (state, version, done)
            self._cond.notify()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ for the subclass's loop
    def _loop(self) -> None:
        raise NotImplementedError

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _wait(self, busy: bool) -> bool:
        """(Under the lock) wait until there is something to do; False once closed. Applies pushed
        weights, then gives an idle engine's first request `batch_wait_ms` to be joined by others."""
        while not self._closed and not self._queue and not busy and self._weights is None:
            self._cond.wait()
        if self._closed:
            return False
        self._apply_weights()
        if not busy and self._queue and self.cfg.batch_wait_ms > 0:
            deadline = time.monotonic() + self.cfg.batch_wait_ms / 1000
            while (sum(r.req.n for r in self._queue) < self.cfg.max_batch_size
                   and (left := deadline - time.monotonic()) > 0):
                self._cond.wait(left)
        return True

    def _pop(self, free: int) -> list[Pending]:
        """(Under the lock) waiting requests, in order, whose rows fit in `free`; cancelled ones dropped."""
        out = []
        while self._queue and self._queue[0].req.n <= free:
            r = self._queue.popleft()
            if not r.cancelled:
                out.append(r)
                free -= r.req.n
        return out

    def _apply_weights(self) -> None:
        if self._weights is None:
            return
        state, version, done = self._weights
        self._weights = None
        err = None
        try:
            self._load(state)
            self.version = version
        except Exception as e:  # wrong shapes/keys: keep serving the old weights, tell the publisher
            err = f"weights version {version} not loaded: {type(e).__name__}: {e}"
            self.weight_errors.append(err)
        if done is not None:
            done(version, err)


class ContinuousEngine(QueuedEngine):
    scores_prompts = True
    """Returns prompt logprobs (echo) and takes max_tokens 0 (the vLLM backend does not)."""

    def __init__(self, model, tok, cfg: EngineConfig, version: int = 0):
        super().__init__(cfg, version, "minimind-engine")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.model = model.eval()
        self.tok = tok
        self.mcfg = model.config
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.token_bytes = token_bytes(tok)
        self.prefill_sizes: collections.Counter[int] = collections.Counter()
        self._reset()
        self._thread.start()

    def stats(self) -> dict[str, Any]:
        return {"decode_batch_sizes": dict(sorted(self.batch_sizes.items())),
                "prefill_batch_sizes": dict(sorted(self.prefill_sizes.items())),
                "decode_steps": sum(self.batch_sizes.values()), "requests": self.served,
                "max_batch_size": self.cfg.max_batch_size, "weights_version": self.version}

    # ------------------------------------------------------------------ loop
    def _reset(self) -> None:
        self.cache = BatchCache(self.mcfg, self.device, self.dtype)
        self.rows: list[_Row] = []
        self.logits: torch.Tensor | None = None

    def _live(self) -> int:
        return sum(not r.dead for r in self.rows)

    def _loop(self) -> None:
        if self.cfg.threads:
            # OpenMP's thread count is per calling thread: set it in the thread that runs the model
            torch.set_num_threads(self.cfg.threads)
        while True:
            new = self._admit()
            if new is None:
                return
            try:
                with torch.inference_mode():
                    self._step(new)
            except Exception as e:  # a bad batch fails its requests, never the replica
                msg = f"{type(e).__name__}: {e}"
                traceback.print_exc()
                owners = {id(r.owner): r.owner for r in self.rows}
                owners.update({id(r): r for r in new})
                for o in owners.values():
                    o.sink([Update(index=-1, text="", logprobs=[], finish_reason="error", error=msg)])
                self._reset()

    def _admit(self) -> list[Pending] | None:
        with self._cond:
            if not self._wait(busy=bool(self.rows)):
                return None
            return self._pop(self.cfg.max_batch_size - self._live())

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)

    def _step(self, new: list[Pending]) -> None:
        dead = sum(r.dead for r in self.rows)
        if new or (dead and dead * 4 >= len(self.rows)):
            self._join(new)
        if not self.rows:
            return
        toks = self._sample()
        self._emit(toks)
        if self._live() == 0:
            self._reset()
            return
        mask = self.cache.step_mask()
        out = self.model(toks.unsqueeze(-1), attention_mask=mask, position_ids=self.cache.next_pos,
                         cache=self.cache.kv)
        self.cache.next_pos = self.cache.next_pos + 1
        self.logits = out.logits[:, -1].float()
        self.batch_sizes[self._live()] += 1

    def _join(self, new: list[Pending]) -> None:
        """Drop dead rows and prefill + append the rows of `new` (one copy of the cache)."""
        keep_rows = [i for i, r in enumerate(self.rows) if not r.dead]
        keep = torch.tensor(keep_rows, dtype=torch.long, device=self.device)
        old_logits = self.logits[keep] if self.logits is not None and keep_rows else None
        self.rows = [self.rows[i] for i in keep_rows]
        if not new:
            self.cache.rebuild(keep)
            self.logits = old_logits
            return
        prompts = [r.req.prompt_ids for r in new]
        P = max(map(len, prompts))
        ids = torch.zeros((len(new), P), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(new), P), dtype=torch.bool, device=self.device)
        for i, p in enumerate(prompts):
            ids[i, P - len(p):] = torch.as_tensor(p, device=self.device)
            mask[i, P - len(p):] = True
        kv = empty_kv(self.mcfg, self.device, self.dtype)
        kv.k = [torch.zeros((len(new), self.mcfg.num_key_value_heads, P, self.mcfg.head_dim),
                            device=self.device, dtype=self.dtype) for _ in range(self.mcfg.num_hidden_layers)]
        kv.v = [torch.zeros_like(k) for k in kv.k]
        kv.max_len = P
        out = self.model(ids, attention_mask=mask, cache=kv, logits_slice=slice(-1, None))
        for i, r in enumerate(new):
            if r.req.scores_prompt:
                r.prompt_logprobs = self._prompt_logprobs(out.hidden_states[i, P - len(prompts[i]):], prompts[i],
                                                          r.req.logprobs)
        self.prefill_sizes[len(new)] += 1
        scored_only = [r for r in new if r.req.max_tokens == 0]
        if scored_only:
            self._finish_scored(scored_only)
        counts = [r.req.n if r.req.max_tokens else 0 for r in new]
        if not any(counts):
            self.cache.rebuild(keep)
            self.logits = old_logits
            return
        logits = out.logits[:, -1].float()
        idx = torch.repeat_interleave(torch.arange(len(new), device=self.device),
                                      torch.tensor(counts, device=self.device))
        if len(idx) != len(new):
            kv = repeat_rows(self.mcfg, kv, idx)
        pos = mask.sum(-1, keepdim=True)[idx]
        self.cache.rebuild(keep, kv, mask[idx], pos)
        new_logits = logits[idx]
        self.logits = new_logits if old_logits is None else torch.cat([old_logits, new_logits])
        for r in new:
            for j in range(r.req.n if r.req.max_tokens else 0):
                self.rows.append(_Row(r, j, ChoiceText(self.tok, r.req.stop, self.token_bytes), self._generator(r.req, j)))

    def _prompt_logprobs(self, hidden: torch.Tensor, ids: list[int], k: int) -> list:
        """Per prompt token: (id, logprob under the model given the tokens before it, top-k alternatives);
        the first token has none. The model's own distribution (no temperature or top-p)."""
        logp = F.log_softmax(self.model.lm_head(hidden[:-1]).float(), dim=-1)
        nxt = torch.as_tensor(ids[1:], device=self.device)
        lps = logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1).tolist()
        alts: list[list[tuple[int, float]]] = [[] for _ in lps]
        if k > 0:
            v, ix = logp.topk(k, dim=-1)
            alts = [list(zip(a, b)) for a, b in zip(ix.tolist(), v.tolist())]
        return [(ids[0], None, [])] + list(zip(ids[1:], lps, alts))

    def _finish_scored(self, done: list[Pending]) -> None:
        """Requests with max_tokens 0 (echo only): every choice ends now with the prompt, no tokens."""
        for r in done:
            r.rows_left = 0
            self.served += 1
            r.sink([Update(j, "", [], "length", 0, prompt_logprobs=r.prompt_logprobs) for j in range(r.req.n)])

    @staticmethod
    def _generator(req: Completion, j: int) -> torch.Generator | None:
        if req.temperature == 0:
            return None
        seed = random.getrandbits(62) if req.seed is None else (req.seed * 1_000_003 + j) % (2 ** 62)
        return torch.Generator().manual_seed(seed)

    def _sample(self) -> torch.Tensor:
        logits = self.logits
        reqs = [r.owner.req for r in self.rows]
        temps = torch.tensor([q.temperature for q in reqs], device=self.device)
        greedy = temps == 0
        scaled = logits / torch.where(greedy, torch.ones_like(temps), temps).unsqueeze(-1)
        top_p = torch.tensor([q.top_p for q in reqs], device=self.device)
        nucleus = (top_p < 1) & ~greedy
        if bool(nucleus.any()):
            sorted_logits, order = scaled.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # drop a token when the mass before it already reaches top_p (the first always stays)
            drop_sorted = ((probs.cumsum(-1) - probs) >= top_p.unsqueeze(-1)) & nucleus.unsqueeze(-1)
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            scaled = scaled.masked_fill(drop, float("-inf"))
        logp = F.log_softmax(scaled, dim=-1)
        tok = logp.max(-1).indices
        if not bool(greedy.all()):
            u = torch.tensor([0.0 if r.gen is None else float(torch.rand((), generator=r.gen)) for r in self.rows],
                             device=self.device, dtype=logp.dtype)
            cdf = logp.exp().cumsum(-1)
            total = cdf[:, -1]
            u = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
            drawn = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1).clamp_(max=logp.shape[-1] - 1)
            tok = torch.where(greedy, tok, drawn)
        self._logp = logp
        return tok

    def _emit(self, toks: torch.Tensor) -> None:
        lp = self._logp.gather(-1, toks.unsqueeze(-1)).squeeze(-1).tolist()
        tok_list = toks.tolist()
        updates: dict[int, tuple[Pending, list[Update]]] = {}
        for i, row in enumerate(self.rows):
            if row.dead:
                continue
            o, q = row.owner, row.owner.req
            if o.cancelled:
                row.dead = True
                continue
            t = tok_list[i]
            row.count += 1
            is_stop = t == self.tok.eos_id
            if not is_stop:
                row.text.add(t)
            if q.logprobs is not None:
                alts = []
                if q.logprobs > 0:
                    v, ix = self._logp[i].topk(q.logprobs)
                    alts = list(zip(ix.tolist(), v.tolist()))
                row.logprobs.append((t, lp[i], alts))
            reason = "stop" if is_stop or row.text.stopped else ("length" if row.count >= q.max_tokens else None)
            if reason:
                row.text.flush()
                row.dead = True
                o.rows_left -= 1
            if q.stream:
                text = row.text.delta(final=reason is not None)
                if not (text or reason or row.logprobs):
                    continue
                u = Update(row.index, text, row.logprobs, reason, row.count)
                row.logprobs = []
            elif reason:
                u = Update(row.index, row.text.text, row.logprobs, reason, row.count)
            else:
                continue
            if not row.sent_prompt:
                u.prompt_logprobs, row.sent_prompt = o.prompt_logprobs, True
            updates.setdefault(id(o), (o, []))[1].append(u)
        for o, us in updates.values():
            if o.rows_left == 0:
                self.served += 1
            o.sink(us)
