"""OpenAI request validation: JSON bodies in, typed `Completion` requests out, or an `APIError`.

Every check names the offending field the way the OpenAI API does (`messages[2].role`,
`max_tokens`, ...), so a client sees a 4xx error object, never a 500 or a dropped connection.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError
from .fields import CHAT, CHAT_NOOPS, COMPLETIONS, COMPLETIONS_NOOPS, check_fields
from .tools import message_tool_calls, parse_tools

ROLES = ("system", "user", "assistant", "tool")
"""Chat roles the MiniMind template renders (tool: a tool result, see serving.tools)."""


@dataclass
class Limits:
    """What one server accepts (set from ServeConfig and the model's context window)."""

    context: int
    """Prompt + completion tokens the model can attend to (max_position_embeddings)."""
    max_n: int
    """Most choices one request may ask for."""
    default_max_tokens: int
    """Completion length when the request gives no max_tokens (clipped to the context left)."""
    model_names: tuple[str, ...]
    """Names this server answers to in the `model` field."""


@dataclass
class Completion:
    """One validated request, ready for the engine (prompt already tokenized)."""

    prompt_ids: list[int]
    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    """None: no logprobs; k >= 0: the sampled token's logprob plus the k most likely alternatives."""
    echo: bool = False
    """/v1/completions: the reply starts with the prompt (with logprobs: the prompt tokens' logprobs too)."""
    prompt_text: str = ""
    """The prompt as the client wrote it (a string prompt) or as its token ids decode: what `echo` returns."""
    stream: bool = False
    include_usage: bool = False
    echo_model: str = ""
    tools: list[dict] | None = None
    """Function tools the prompt announced: the reply's tool calls become message.tool_calls."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def scores_prompt(self) -> bool:
        """The engine returns a logprob (and top alternatives) for every prompt token after the first."""
        return self.echo and self.logprobs is not None


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(f"request body is not valid JSON: {e}", param="body", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(f"request body must be a JSON object, got {type(body).__name__}", param="body")
    return body


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise APIError(f"{name}={v!r}: must be a number in [{lo}, {hi}]", param=name)
    return float(v)


def _int(body: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise APIError(f"{name}={v!r}: must be an integer in [{lo}, {hi}]", param=name)
    return v


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or len(items) > 4 or not all(isinstance(s, str) and s for s in items):
        raise APIError(f"stop={v!r}: must be a non-empty string or a list of up to 4 non-empty strings",
                       param="stop")
    return tuple(items)


def _model(body: dict, limits: Limits) -> str:
    name = body.get("model")
    if name is None:
        return limits.model_names[0]
    if name not in limits.model_names:
        raise APIError(f"The model {name!r} does not exist; this server serves {list(limits.model_names)}",
                       param="model", status=404, code="model_not_found")
    return name


def _common(body: dict, limits: Limits, prompt_ids: list[int], prompt_field: str,
            min_tokens: int = 1) -> Completion:
    model = _model(body, limits)
    n = _int(body, "n", 1, 1, limits.max_n)
    # max_tokens is checked on its own first, then against what the prompt leaves of the context
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, name, None, min_tokens, limits.context)
    if len(prompt_ids) >= limits.context:
        raise APIError(f"This model's maximum context length is {limits.context} tokens; the "
                       f"{prompt_field} has {len(prompt_ids)} tokens", param=prompt_field,
                       code="context_length_exceeded")
    room = limits.context - len(prompt_ids)
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, room)
    elif max_tokens > room:
        raise APIError(f"This model's maximum context length is {limits.context} tokens; you asked for "
                       f"{len(prompt_ids) + max_tokens} ({len(prompt_ids)} in the {prompt_field}, {max_tokens} "
                       f"in the completion): reduce the {prompt_field} or max_tokens", param=prompt_field,
                       code="context_length_exceeded")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(f"stream={stream!r}: must be true or false", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise APIError(f"stream_options={opts!r}: must be an object", param="stream_options")
    return Completion(
        prompt_ids=prompt_ids, max_tokens=max_tokens, n=n,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
        seed=_int(body, "seed", None, -(2 ** 63), 2 ** 63 - 1),
        stop=_stop(body), stream=stream, include_usage=bool(opts.get("include_usage", False)),
        echo_model=model)


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if c is None and m.get("role") == "assistant":
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                   and isinstance(p.get("text"), str) for p in c):
        return "".join(p["text"] for p in c)
    raise APIError(f"messages[{i}].content: must be a string or a list of text parts", param=f"messages[{i}].content")


def parse_chat(body: dict, limits: Limits, tok) -> Completion:
    """Validate a /v1/chat/completions body; renders the messages with the tokenizer's template."""
    check_fields(body, CHAT, CHAT_NOOPS)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError("messages: must be a non-empty list of {role, content} objects", param="messages")
    tools = parse_tools(body)
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise APIError(f"messages[{i}]: must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise APIError(f"messages[{i}].role={role!r}: must be one of {list(ROLES)}", param=f"messages[{i}].role")
        msg = {"role": role, "content": _content(m, i)}
        calls = message_tool_calls(m, i)
        if calls:
            msg["tool_calls"] = calls
        clean.append(msg)
    ids = tok.encode(tok.apply_chat_template(clean, add_generation_prompt=True, tools=tools))
    req = _common(body, limits, ids, "messages")
    req.logprobs = _chat_logprobs(body)
    req.tools = tools
    return req


def _chat_logprobs(body: dict) -> int | None:
    want = body.get("logprobs", False)
    if want is None:
        want = False
    if not isinstance(want, bool):
        raise APIError(f"logprobs={want!r}: must be true or false", param="logprobs")
    top = _int(body, "top_logprobs", None, 0, 20)
    if top is not None and not want:
        raise APIError("top_logprobs needs logprobs=true", param="top_logprobs")
    return (top or 0) if want else None


def parse_completion(body: dict, limits: Limits, tok) -> list[Completion]:
    """Validate a /v1/completions body: one prompt (a string or a list of token ids) or a list of
    prompts (strings, or lists of token ids), one Completion each. `echo` returns the prompt before the
    completion (with `logprobs: k`, each prompt token's logprob and its k most likely alternatives,
    the first token's null); with echo, `max_tokens` may be 0 (score the prompt, generate nothing)."""
    check_fields(body, COMPLETIONS, COMPLETIONS_NOOPS)
    echo = body.get("echo", False)
    if echo is None:
        echo = False
    if not isinstance(echo, bool):
        raise APIError(f"echo={echo!r}: must be true or false", param="echo")
    prompts = _prompts(body.get("prompt"), tok)
    if len(prompts) > 1 and body.get("stream"):
        raise APIError("stream=true with several prompts is not supported by this server: send one prompt per "
                       "streamed request", param="stream")
    logprobs = _int(body, "logprobs", None, 0, 20)
    reqs = []
    for i, (ids, text) in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        req = _common(body, limits, ids, where, min_tokens=0 if echo else 1)
        req.logprobs, req.echo, req.prompt_text = logprobs, echo, text
        reqs.append(req)
    return reqs


def _prompts(p: Any, tok) -> list[tuple[list[int], str]]:
    """(token ids, text) of each prompt: a string, a list of token ids, or a list of either."""
    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(p, str) or is_ids(p):
        items = [p]
    elif isinstance(p, list) and p and all(isinstance(x, str) or is_ids(x) for x in p):
        items = p
    else:
        raise APIError("prompt: must be a string, a list of token ids, or a non-empty list of those", param="prompt")
    out = []
    for i, x in enumerate(items):
        where = "prompt" if len(items) == 1 else f"prompt[{i}]"
        if isinstance(x, str):
            ids, text = tok.encode(x), x
        else:
            if not all(0 <= t < tok.vocab_size for t in x):
                raise APIError(f"{where}: token ids must be in [0, {tok.vocab_size})", param=where)
            ids, text = list(x), tok.decode(x, skip_special_tokens=False)
        if not ids:
            raise APIError(f"{where}: must not be empty", param=where)
        out.append((ids, text))
    return out
