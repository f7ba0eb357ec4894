"""Environments and tools for multi-turn rollouts (see docs/tools_and_environments.md)."""
from .calculator import Calculator, CalculatorError
from .environment import EnvStep, Environment, ToolEnv, parse_tool_calls
from .tools import Tool, ToolRegistry, ToolResult, calculator_tool

__all__ = ["Calculator", "CalculatorError", "EnvStep", "Environment", "ToolEnv", "parse_tool_calls", "Tool",
           "ToolRegistry", "ToolResult", "calculator_tool"]
