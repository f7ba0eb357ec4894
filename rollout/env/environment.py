"""The environment a multi-turn rollout talks to: it reads the model's last assistant turn, runs the
tool calls written in the chat template's format, and answers with tool messages (or says the
episode is done).

The template's tool-call format (MiniMind-3, Qwen): inside an assistant turn,

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "123 * 45"}}
    </tool_call>

A turn with no `<tool_call>` is the final answer: the episode is done. A malformed call (bad JSON,
no name, an unclosed tag) is not a crash: the model gets an error observation, as for a failing
tool, and may try again on its next turn.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .tools import ToolRegistry

TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


@dataclass
class EnvStep:
    messages: list[dict] = field(default_factory=list)
    """Messages to append after the assistant turn (role 'tool'); empty when done."""
    done: bool = True
    """No tool call in the turn: it is the final answer."""
    calls: int = 0
    """Tool calls the turn made (well-formed or not)."""
    errors: int = 0
    """Calls that failed: malformed, unknown tool, bad arguments, tool error or timeout."""


@runtime_checkable
class Environment(Protocol):
    def tool_schemas(self) -> list[dict]:
        """The tools the prompt announces (tools=... of the chat template); [] for none."""
        ...

    def step(self, messages: list[dict], assistant_text: str) -> EnvStep:
        """React to the model's turn `assistant_text`, given the conversation before it."""
        ...


def parse_tool_calls(text: str) -> list[dict | str]:
    """Each `<tool_call>` block of `text` as {"name", "arguments"}, or as an error string for a block
    that is not a well-formed call."""
    out: list[dict | str] = []
    for m in TOOL_CALL_RE.finditer(text):
        body, closed = m.group(1).strip(), m.group(2)
        if not closed:
            out.append("error: <tool_call> is not closed with </tool_call>")
            continue
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            out.append(f"error: the tool call is not valid JSON ({e.msg} at character {e.pos})")
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            out.append('error: a tool call is {"name": ..., "arguments": {...}}')
            continue
        args: Any = call.get("arguments", {})
        if isinstance(args, str):  # OpenAI style: arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                out.append("error: arguments is a string that is not a JSON object")
                continue
        out.append({"name": call["name"], "arguments": args})
    return out


@dataclass
class ToolEnv:
    """Runs the registry's tools on the calls of each assistant turn."""
    registry: ToolRegistry
    timeout_s: float | None = 2.0
    """Seconds one tool call may take before it becomes an error observation."""

    def tool_schemas(self) -> list[dict]:
        return self.registry.schemas()

    def step(self, messages: list[dict], assistant_text: str) -> EnvStep:
        calls = parse_tool_calls(assistant_text)
        if not calls:
            return EnvStep(done=True)
        out, errors = [], 0
        for c in calls:
            if isinstance(c, str):
                text, ok = c, False
            else:
                r = self.registry.call(c["name"], c["arguments"], self.timeout_s)
                text, ok = r.text, r.ok
            errors += not ok
            out.append({"role": "tool", "content": text})
        return EnvStep(messages=out, done=False, calls=len(calls), errors=errors)
