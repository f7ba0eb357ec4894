"""Tool calling the OpenAI way on /v1/chat/completions.

Request: `tools` ([{"type": "function", "function": {"name", "description", "parameters"}}]) are
rendered by the tokenizer's chat template (its tools block); `tool_choice` "auto" (default) or
"none" (the tools are not shown); assistant messages may carry `tool_calls`
([{"id", "type": "function", "function": {"name", "arguments": JSON string}}]) and results come
back as `tool` messages — the template renders both in its own format (MiniMind-3:
`<tool_call>{json}</tool_call>`, `<tool_response>` blocks).

Response: the calls the model wrote in the template's format become `message.tool_calls` with
`arguments` as a JSON string, the text around them stays `content` (null when empty), and
`finish_reason` is "tool_calls". A malformed block stays in `content` as text. Streaming with tools
is refused with a 400 (the calls are only known once the text is complete).
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from rollout.env.environment import TOOL_CALL_RE, parse_tool_calls

from .errors import APIError


def parse_tools(body: dict) -> list[dict] | None:
    """The request's tools (validated), or None when absent or tool_choice is "none"."""
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if choice not in (None, "auto", "none"):
        raise APIError(f"tool_choice={choice!r}: this server supports 'auto' and 'none'", param="tool_choice")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise APIError("tools: must be a list of function tools", param="tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise APIError(f"tools[{i}]: must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                           param=f"tools[{i}]")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise APIError(f"tools[{i}].function.parameters: must be a JSON schema object",
                           param=f"tools[{i}].function.parameters")
    if body.get("stream") and tools and choice != "none":
        raise APIError("stream=true with tools is not supported by this server: ask without streaming",
                       param="stream")
    return tools if tools and choice != "none" else None


def message_tool_calls(m: dict, i: int) -> list[dict] | None:
    """An assistant message's OpenAI tool_calls in the form chat templates take (arguments parsed)."""
    calls = m.get("tool_calls")
    if calls is None:
        return None
    if m.get("role") != "assistant" or not isinstance(calls, list):
        raise APIError(f"messages[{i}].tool_calls: only assistant messages carry a list of tool calls",
                       param=f"messages[{i}].tool_calls")
    out = []
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        where = f"messages[{i}].tool_calls[{j}]"
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise APIError(f"{where}: must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}",
                           param=where)
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except json.JSONDecodeError:
                raise APIError(f"{where}.function.arguments: not valid JSON",
                               param=f"{where}.function.arguments") from None
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def tool_message(text: str, finish_reason: str | None) -> tuple[dict[str, Any], str | None]:
    """(assistant message, finish_reason) of a generated text when tools were offered."""
    calls = [c for c in parse_tool_calls(text) if isinstance(c, dict)]
    if not calls:
        return {"role": "assistant", "content": text}, finish_reason

    def drop_parsed(m) -> str:   # a well-formed call leaves the content; a malformed one stays as text
        return "" if isinstance(parse_tool_calls(m.group(0))[0], dict) else m.group(0)

    rest = TOOL_CALL_RE.sub(drop_parsed, text).strip()
    tool_calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                   "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                  for c in calls]
    return ({"role": "assistant", "content": rest or None, "tool_calls": tool_calls},
            "tool_calls" if finish_reason == "stop" else finish_reason)
