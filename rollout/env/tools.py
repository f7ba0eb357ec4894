"""Tools a rollout environment can run: a Python function with an OpenAI-style JSON schema, kept in a
`ToolRegistry` the user fills explicitly (no import-time registration).

    registry = ToolRegistry()
    registry.add(Tool("calculator", "Evaluate an arithmetic expression exactly.",
                      {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}, Calculator()))
    registry.schemas()                           # -> tools=... for tok.apply_chat_template
    registry.call("calculator", {"expression": "12*34"}, timeout_s=2.0)  # -> ToolResult("408", ok=True)

A call never raises: an unknown tool, arguments that do not match the schema, an exception inside
the function and a timeout all come back as `ToolResult(text="error: ...", ok=False)`, which the
environment shows the model as the observation.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,),
}


@dataclass(frozen=True)
class Tool:
    name: str
    """The name the model calls it by."""
    description: str
    """One line shown to the model in the tools block."""
    parameters: dict
    """JSON schema of the arguments object: {"type": "object", "properties": {...}, "required": [...]}."""
    fn: Callable[..., Any]
    """Called with the arguments as keywords; its return value is shown to the model as text."""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"Tool name {self.name!r}: use letters, digits and underscores")
        if self.parameters.get("type") != "object" or not isinstance(self.parameters.get("properties", {}), dict):
            raise ValueError(f"Tool {self.name!r}: parameters must be a JSON schema of type 'object' with 'properties'")
        for arg, spec in self.parameters.get("properties", {}).items():
            if spec.get("type") not in _JSON_TYPES:
                raise ValueError(f"Tool {self.name!r}: argument {arg!r} has type {spec.get('type')!r}; "
                                 f"use one of {sorted(_JSON_TYPES)}")
        missing = set(self.parameters.get("required", [])) - set(self.parameters.get("properties", {}))
        if missing:
            raise ValueError(f"Tool {self.name!r}: required arguments {sorted(missing)} are not in properties")

    def schema(self) -> dict:
        """The OpenAI function-tool form that chat templates (and the OpenAI API) take."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def check_arguments(self, args: Any) -> str | None:
        """None when `args` fits the schema, else a one-line reason."""
        if not isinstance(args, dict):
            return f"arguments must be a JSON object, got {type(args).__name__}"
        props = self.parameters.get("properties", {})
        missing = [a for a in self.parameters.get("required", []) if a not in args]
        if missing:
            return f"missing argument(s) {', '.join(missing)}"
        unknown = [a for a in args if a not in props]
        if unknown:
            return f"unknown argument(s) {', '.join(unknown)} (expected {', '.join(props) or 'none'})"
        for a, v in args.items():
            want = props[a]["type"]
            if not isinstance(v, _JSON_TYPES[want]) or (want in ("integer", "number") and isinstance(v, bool)):
                return f"argument {a} must be a {want}, got {type(v).__name__}"
        return None


@dataclass(frozen=True)
class ToolResult:
    text: str
    """What the model sees (the function's value as text, or 'error: ...')."""
    ok: bool
    """False when the call failed (unknown tool, bad arguments, exception, timeout)."""


@dataclass
class ToolRegistry:
    tools: dict[str, Tool] = field(default_factory=dict)
    max_result_chars: int = 500
    """Longer results are cut (with a note) so one call cannot flood the context."""

    def add(self, tool: Tool) -> "ToolRegistry":
        if tool.name in self.tools:
            raise ValueError(f"ToolRegistry: a tool named {tool.name!r} is already registered")
        self.tools[tool.name] = tool
        return self

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self.tools.values()]

    def call(self, name: Any, arguments: Any, timeout_s: float | None = None) -> ToolResult:
        """Run tool `name`; never raises (see module doc). With `timeout_s`, the call runs in a daemon
        thread and is abandoned after that many seconds (a Python thread cannot be killed: tools must
        bound their own work, as the calculator does)."""
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return ToolResult(f"error: unknown tool {name!r} (available: {', '.join(self.tools) or 'none'})", False)
        problem = tool.check_arguments(arguments)
        if problem:
            return ToolResult(f"error: {name}: {problem}", False)
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = tool.fn(**arguments)
            except Exception as e:  # noqa: BLE001 - the model sees the error, the worker lives on
                box["error"] = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)

        if timeout_s:
            t = threading.Thread(target=run, daemon=True, name=f"tool-{name}")
            t.start()
            t.join(timeout_s)
            if t.is_alive():
                return ToolResult(f"error: {name} timed out after {timeout_s:g}s", False)
        else:
            run()
        if "error" in box:
            return ToolResult(f"error: {box['error']}", False)
        text = str(box.get("value"))
        if len(text) > self.max_result_chars:
            text = text[: self.max_result_chars] + f"... [cut at {self.max_result_chars} characters]"
        return ToolResult(text, True)


def calculator_tool(calculator: Any = None) -> Tool:
    """The built-in calculator as a Tool (argument: `expression`)."""
    from .calculator import Calculator

    return Tool("calculator", "Evaluate an arithmetic expression exactly: + - * / ** and parentheses.",
                {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
                calculator or Calculator())
