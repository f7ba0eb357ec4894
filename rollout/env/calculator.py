"""A calculator tool: arithmetic expressions parsed with `ast` and evaluated exactly, never `eval`'d.

Grammar: numbers (integers, decimals like 2.5, scientific notation like 1e3), + - * / (also the
symbols × ÷ −), ** and ^ for powers, unary + and -, parentheses. Values are exact rationals
(`fractions.Fraction`): 1/3 + 1/6 is 1/2, 0.1 + 0.2 is 3/10. Results print as integers when whole,
else as a reduced fraction with its decimal value ("7/4 = 1.75").

Every operation is bounded before it is computed, so hostile input fails fast with a message
instead of hanging or exhausting memory: an expression longer than `max_chars`, nesting deeper
than `max_depth`, more than `max_nodes` syntax nodes, an operand or result with more than
`max_digits` digits, a power whose result would exceed it (`9**9**9` is refused from the size
estimate exponent * log10(base), without computing anything), or a non-integer exponent.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from fractions import Fraction

_SYMBOLS = str.maketrans({"×": "*", "÷": "/", "−": "-", "^": "**", ",": ""})


class CalculatorError(ValueError):
    """The expression is not arithmetic the calculator accepts, or exceeds its bounds."""


@dataclass(frozen=True)
class Calculator:
    max_chars: int = 200
    """Longest expression accepted, in characters."""
    max_depth: int = 32
    """Deepest nesting of operations and parentheses."""
    max_nodes: int = 200
    """Most syntax-tree nodes."""
    max_digits: int = 60
    """Most digits of any operand, intermediate result (numerator or denominator) or power."""

    def evaluate(self, expression: str) -> Fraction:
        """The exact value of `expression`; CalculatorError with a one-line reason otherwise."""
        if not isinstance(expression, str):
            raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
        text = expression.strip().translate(_SYMBOLS)
        if not text:
            raise CalculatorError("empty expression")
        if len(text) > self.max_chars:
            raise CalculatorError(f"expression has {len(text)} characters (at most {self.max_chars})")
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError:
            raise CalculatorError(f"cannot parse {expression!r} as arithmetic") from None
        nodes = sum(1 for _ in ast.walk(tree))
        if nodes > self.max_nodes:
            raise CalculatorError(f"expression has {nodes} terms (at most {self.max_nodes})")
        return self._eval(tree.body, 0, text)

    def __call__(self, expression: str) -> str:
        """The tool's text answer: '42', or '7/4 = 1.75' for a non-integer."""
        return format_value(self.evaluate(expression))

    # ------------------------------------------------------------------ evaluation
    def _eval(self, node: ast.AST, depth: int, src: str) -> Fraction:
        if depth > self.max_depth:
            raise CalculatorError(f"expression nests deeper than {self.max_depth}")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise CalculatorError(f"{node.value!r} is not a number")
            return self._check(self._number(node, src), "number")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            v = self._eval(node.operand, depth + 1, src)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            op = type(node.op)
            if op not in _BINOPS:
                raise CalculatorError(f"operator {_op_name(node.op)} is not supported (use + - * / **)")
            left = self._eval(node.left, depth + 1, src)
            right = self._eval(node.right, depth + 1, src)
            return self._check(_BINOPS[op](self, left, right), "result")
        raise CalculatorError(f"{_describe(node)} is not allowed: only numbers, + - * / ** and parentheses")

    def _number(self, node: ast.Constant, src: str) -> Fraction:
        if isinstance(node.value, int):
            return Fraction(node.value)
        if not math.isfinite(node.value):
            raise CalculatorError("number out of range")
        # the literal as written ("0.1" is 1/10, not the binary float nearest to it)
        literal = (ast.get_source_segment(src, node) or repr(node.value)).replace("_", "")
        return Fraction(literal)

    def _check(self, v: Fraction, what: str) -> Fraction:
        for part in (v.numerator, v.denominator):
            # bit_length screens cheaply; operands are already bounded, so str() stays small
            if abs(part).bit_length() > 3.32 * self.max_digits and len(str(abs(part))) > self.max_digits:
                raise CalculatorError(f"{what} has more than {self.max_digits} digits")
        return v

    def _pow(self, base: Fraction, exp: Fraction) -> Fraction:
        if exp.denominator != 1:
            raise CalculatorError("only whole-number exponents are supported (roots are not exact)")
        e = exp.numerator
        if base == 0 and e < 0:
            raise CalculatorError("division by zero (0 to a negative power)")
        if base == 0 or abs(base) == 1:
            return base ** e
        # digits of the result ~ |e| * log10 of the larger of numerator/denominator: refuse before computing
        size = max(abs(base.numerator), base.denominator)
        if abs(e) * math.log10(size) > self.max_digits:
            raise CalculatorError(f"power result would have more than {self.max_digits} digits")
        return base ** e


def _div(calc: Calculator, a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise CalculatorError("division by zero")
    return a / b


_BINOPS = {
    ast.Add: lambda c, a, b: a + b,
    ast.Sub: lambda c, a, b: a - b,
    ast.Mult: lambda c, a, b: a * b,
    ast.Div: _div,
    ast.Pow: Calculator._pow,
}


def _op_name(op: ast.AST) -> str:
    return {ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.BitXor: "^", ast.BitAnd: "&",
            ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>"}.get(type(op), type(op).__name__)


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.Attribute):
        return "attribute access"
    return type(node).__name__


def format_value(v: Fraction) -> str:
    """'42' for integers, 'p/q = d' for rationals (d: the decimal, exact if it terminates, else 12
    significant digits with '...')."""
    if v.denominator == 1:
        return str(v.numerator)
    return f"{v.numerator}/{v.denominator} = {_decimal(v)}"


def _decimal(v: Fraction, places: int = 12) -> str:
    sign = "-" if v < 0 else ""
    v = abs(v)
    whole, rest = divmod(v.numerator, v.denominator)
    digits = []
    for _ in range(places):
        if rest == 0:
            break
        rest *= 10
        d, rest = divmod(rest, v.denominator)
        digits.append(str(d))
    tail = "..." if rest else ""
    return f"{sign}{whole}." + "".join(digits) + tail
