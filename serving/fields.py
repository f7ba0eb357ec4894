"""Which request fields each endpoint takes: a field the server does not act on is a 400 naming it.

A client must be able to tell that it did not get what it asked for, so nothing is silently
ignored, except the documented no-ops below: fields OpenAI clients and agent frameworks send with
values that change nothing here (an end-user id, a penalty of 0, plain-text output). The same field
with any other value is a 400. A field whose value is null counts as absent, as in OpenAI's API.
The tables are listed in docs/serving.md.
"""
from __future__ import annotations

from typing import Any

from .errors import APIError

COMMON = frozenset({"model", "max_tokens", "n", "temperature", "top_p", "seed", "stop", "stream",
                    "stream_options", "logprobs"})
CHAT = COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice"}
COMPLETIONS = COMMON | {"prompt", "echo"}

ANY = object()
"""A no-op whatever its value (it only labels the request)."""
COMMON_NOOPS: dict[str, Any] = {
    "user": ANY,                  # end-user id for the provider's abuse monitoring
    "metadata": ANY,              # tags for stored completions (nothing is stored here)
    "store": (False,),
    "service_tier": ("auto", "default"),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
}
CHAT_NOOPS = {**COMMON_NOOPS,
              "parallel_tool_calls": (True,),       # the template lets the model write several calls
              "response_format": ({"type": "text"},)}
COMPLETIONS_NOOPS = {**COMMON_NOOPS, "best_of": (1,), "suffix": ("",)}


def _same(value: Any, allowed: Any) -> bool:
    """Equal and of the same kind: true is not 1, 0.0 is 0."""
    return isinstance(value, bool) == isinstance(allowed, bool) and value == allowed


def check_fields(body: dict, supported: frozenset[str], noops: dict[str, Any]) -> None:
    """400 naming the first field that is neither supported nor a no-op with a no-op value."""
    for name, value in body.items():
        if value is None or name in supported:
            continue
        allowed = noops.get(name)
        if allowed is None:
            raise APIError(f"{name}: this server does not support this request field", param=name,
                           code="unsupported_parameter")
        if allowed is not ANY and not any(_same(value, a) for a in allowed):
            ok = " or ".join(repr(a) for a in allowed)
            raise APIError(f"{name}={value!r} is not supported by this server (only {ok}, which changes nothing)",
                           param=name, code="unsupported_parameter")
