"""The OpenAI endpoints of one replica, independent of how HTTP reaches them.

`ModelServer.chat(body)` / `.completion(body)` validate a JSON body (`serving.protocol`), run it
on the engine and return either a response dict or an async iterator of server-sent-event
lines. Anything the engine reports as failed becomes an OpenAI error object (HTTP 500), never
an exception that could take the replica down.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import torch

from minimind.checkpoint import check_checkpoint, load_model
from minimind.tokenizer import MiniMindTokenizer

from .config import ServeConfig
from .engine import ContinuousEngine, Update
from .errors import APIError
from .protocol import Completion, Limits, parse_chat, parse_completion
from .tools import tool_message


def check_model(cfg: ServeConfig) -> None:
    """What `load_checkpoint` would refuse, found without loading the weights (a MiniMind .pth excepted, see
    minimind.checkpoint.check_checkpoint): run by experiments/serve.py before any replica starts."""
    cfg.check_source()
    src = Path(cfg.model or cfg.init)
    served_tokenizer(cfg, src, check_checkpoint(src))


def served_tokenizer(cfg: ServeConfig, src: Path, model_config: Any) -> MiniMindTokenizer:
    """The tokenizer of --tokenizer (default: the checkpoint's folder), checked against the model's vocabulary."""
    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else (src if src.is_dir() else src.parent)
    tok = MiniMindTokenizer.load(tok_dir)
    if tok.vocab_size > model_config.vocab_size:
        raise ValueError(f"tokenizer {tok_dir} has {tok.vocab_size} tokens but the model {src} only "
                         f"{model_config.vocab_size}: pass the tokenizer the model was trained with (--tokenizer)")
    return tok


def load_checkpoint(cfg: ServeConfig) -> tuple[torch.nn.Module, MiniMindTokenizer, str]:
    """(model, tokenizer, served name) for --model/--init/--tokenizer; vocabularies checked."""
    src = Path(cfg.model or cfg.init)
    model = load_model(src, device=cfg.device)
    if cfg.device == "cpu" and next(model.parameters()).dtype in (torch.float16, torch.bfloat16):
        model = model.float()  # half precision matmuls are 10-100x slower than fp32 on CPUs
    tok = served_tokenizer(cfg, src, model.config)
    name = cfg.name or (src.name if src.is_dir() else src.stem)
    return model, tok, name


class ModelServer:
    def __init__(self, cfg: ServeConfig, model, tok: MiniMindTokenizer, name: str, version: int = 0):
        self.cfg, self.tok, self.name = cfg, tok, name
        self.created = int(time.time())
        self.replica_id = uuid.uuid4().hex[:12]
        self.limits = Limits(context=model.config.max_position_embeddings, max_n=cfg.max_n,
                             default_max_tokens=cfg.default_max_tokens, model_names=(name,))
        self.engine = make_engine(cfg, model, tok, version)

    # ------------------------------------------------------------------ plain endpoints
    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created,
                                            "owned_by": "minimind-rl", "max_model_len": self.limits.context}]}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.name, "replica": self.replica_id, **self.engine.stats()}

    @property
    def fingerprint(self) -> str:
        return f"minimind-{self.name}-v{self.engine.version}"

    # ------------------------------------------------------------------ generation
    async def _updates(self, req: Completion) -> AsyncIterator[list[Update]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[Update]] = asyncio.Queue()
        ticket = self.engine.submit(req, lambda us: loop.call_soon_threadsafe(queue.put_nowait, us))
        left = req.n
        try:
            while left:
                us = await queue.get()
                for u in us:
                    if u.error:
                        raise APIError(f"generation failed: {u.error}", status=500, type="server_error")
                    left -= u.finish_reason is not None
                yield us
        finally:
            if left:
                ticket.cancel()

    async def chat(self, body: dict) -> dict | AsyncIterator[str]:
        req = parse_chat(body, self.limits, self.tok)
        return self._stream(req, chat=True) if req.stream else await self._complete(req, chat=True)

    async def completion(self, body: dict) -> dict | AsyncIterator[str]:
        reqs = parse_completion(body, self.limits, self.tok)
        if not getattr(self.engine, "scores_prompts", False) and any(r.scores_prompt or not r.max_tokens for r in reqs):
            raise APIError("echo with logprobs (or max_tokens 0) needs the native engine: this server runs "
                           f"--engine {self.cfg.engine}", param="echo")
        if reqs[0].stream:
            return self._stream(reqs[0], chat=False)
        if len(reqs) == 1:
            return await self._complete(reqs[0], chat=False)
        # several prompts: choice i*n + j is choice j of prompt i; usage adds up
        outs = await asyncio.gather(*(self._complete(r, chat=False) for r in reqs))
        choices = [{**c, "index": i * r.n + c["index"]} for i, (r, o) in enumerate(zip(reqs, outs)) for c in o["choices"]]
        usage = {k: sum(o["usage"][k] for o in outs) for k in outs[0]["usage"]}
        return {**outs[0], "choices": choices, "usage": usage}

    def _usage(self, req: Completion, completion_tokens: int) -> dict[str, int]:
        p = len(req.prompt_ids)
        return {"prompt_tokens": p, "completion_tokens": completion_tokens, "total_tokens": p + completion_tokens}

    def _head(self, chat: bool, rid: str, req: Completion, chunk: bool) -> dict[str, Any]:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
        return {"id": rid, "object": obj, "created": int(time.time()), "model": req.echo_model,
                "system_fingerprint": self.fingerprint}

    async def _complete(self, req: Completion, chat: bool) -> dict[str, Any]:
        done: dict[int, Update] = {}
        async for us in self._updates(req):
            for u in us:
                done[u.index] = u
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        choices = []
        for i in range(req.n):
            u = done[i]
            lp = self._logprobs(u.logprobs, chat, 0) if req.logprobs is not None else None
            if chat and req.tools:
                message, finish = tool_message(u.text, u.finish_reason)
                choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": finish})
            elif chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": u.text},
                                "logprobs": lp, "finish_reason": u.finish_reason})
            else:
                if req.echo:
                    lp = self._echoed(req, u, lp)
                text = req.prompt_text + u.text if req.echo else u.text
                choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": u.finish_reason})
        tokens = sum(u.completion_tokens for u in done.values())
        return {**self._head(chat, rid, req, False), "choices": choices, "usage": self._usage(req, tokens)}

    async def _stream(self, req: Completion, chat: bool) -> AsyncIterator[str]:
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        counts = [0] * req.n
        offsets = [0] * req.n
        echoed = [False] * req.n

        def event(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            if chat:
                yield event({**self._head(chat, rid, req, True), "choices": [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                    for i in range(req.n)]})
            async for us in self._updates(req):
                choices = []
                for u in us:
                    counts[u.index] = u.completion_tokens
                    lp = self._logprobs(u.logprobs, chat, offsets[u.index]) if req.logprobs is not None else None
                    offsets[u.index] += len(u.text)
                    if chat:
                        delta = {"content": u.text} if u.text else {}
                        choices.append({"index": u.index, "delta": delta, "logprobs": lp,
                                        "finish_reason": u.finish_reason})
                    else:
                        text = u.text
                        if req.echo and not echoed[u.index]:   # the prompt leads the choice's first chunk
                            echoed[u.index] = True
                            text = req.prompt_text + text
                            lp = self._echoed(req, u, lp)
                            offsets[u.index] += len(req.prompt_text)
                        choices.append({"index": u.index, "text": text, "logprobs": lp,
                                        "finish_reason": u.finish_reason})
                yield event({**self._head(chat, rid, req, True), "choices": choices})
            if req.include_usage:
                yield event({**self._head(chat, rid, req, True), "choices": [],
                             "usage": self._usage(req, sum(counts))})
        except APIError as e:
            yield event(e.body())
        yield "data: [DONE]\n\n"

    # ------------------------------------------------------------------ logprobs
    def _token(self, t: int) -> str:
        return self.tok.decode([t], skip_special_tokens=False)

    def _top_dict(self, alts: list[tuple[int, float]]) -> dict[str, float]:
        """{text: logprob}, most likely first; two ids with the same text keep the higher logprob."""
        out: dict[str, float] = {}
        for a, alp in alts:
            out.setdefault(self._token(a), alp)
        return out

    def _echoed(self, req: Completion, u: Update, generated: dict | None) -> dict | None:
        """Completions logprobs of an echoed choice: the prompt's tokens (when scored) before the generated ones."""
        if generated is None or u.prompt_logprobs is None:
            return generated
        head = self._logprobs(u.prompt_logprobs, chat=False, offset=0)
        shift = len(req.prompt_text)
        return {k: head[k] + ([o + shift for o in generated[k]] if k == "text_offset" else generated[k])
                for k in head}

    def _logprobs(self, entries: list, chat: bool, offset: int) -> dict[str, Any]:
        if chat:
            table = getattr(self.engine, "token_bytes", None)

            def one(t: int, lp: float) -> dict:
                s = self._token(t)
                raw = table[t] if table is not None else s.encode("utf-8")
                return {"token": s, "logprob": lp, "bytes": list(raw)}
            return {"content": [{**one(t, lp), "top_logprobs": [one(a, alp) for a, alp in alts]}
                                for t, lp, alts in entries]}
        tokens = [self._token(t) for t, _, _ in entries]
        text_offset, pos = [], offset
        for s in tokens:
            text_offset.append(pos)
            pos += len(s)
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [None if lp is None else self._top_dict(alts) for _, lp, alts in entries],
                "text_offset": text_offset}


def make_engine(cfg: ServeConfig, model, tok, version: int):
    if cfg.engine == "vllm":
        from .vllm_backend import VLLMBatchEngine  # optional dependency, checked there

        return VLLMBatchEngine(cfg, model, tok, version)
    return ContinuousEngine(model, tok, cfg.batch, version)
