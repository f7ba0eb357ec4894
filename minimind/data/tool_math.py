"""Built-in tool-use math (no download): arithmetic a small model cannot do in its head but does
exactly with a calculator tool.

  easy   one schoolbook step: a + b with 2-5 digit numbers, a product with ONE single-digit factor
         (either side; the other has 2-5 digits), or a sum of 2-4 one/two-digit numbers
                                                                       "What is 7 * 4821?"
  hard   long multiplication (4-digit x 3-digit) and long sums (three 3-digit numbers)
                                                                       "What is 7655 * 571?"
  copy   "Repeat exactly: 553, 4821034; 7" -> the same text: no arithmetic, no tool

Why these: the SFT'd model must learn to COPY the question's expression into the call and the
tool's result into its answer, which a 4-layer model only generalises to shapes it has copied
before. Easy problems therefore carry numbers of every length the hard ones use, in both operand
positions, 2-4 terms, and results of up to 6 digits; what they never hold is a product of two
multi-digit numbers or a sum of several multi-digit numbers. Copy chats (lists of 1-7 digit numbers
joined by ", ", " " or "; ") teach copying apart from arithmetic and from the call format.

The hard shapes sit at the edge of what the tool-SFT'd demo model copies: it solves some of them
with the tool (greedy 11-35% per kind in the default runs) and none without, so GRPO has groups
with a correct episode to reinforce. Measured on the demo model (40-60 held-out problems each,
greedy, 400-step tool SFT): 3-digit x 3-digit products are copied 50-100% of the time already
(little left for RL); four-term sums of 3/4-digit numbers are never copied, not in 8 samples at
temperature 1 either (`5888 + 7932 + ...` -> `58 + 72 + ...`), whatever the easy set (sums of 2-8
short terms, chains of two-term calls) or copy chats, so RL never sees a reward on them. Hard problems are 0% without the tool.

SFT chats show the tool-call format on EASY problems only (MiniMind-3 layout: the tool list on the
user message as `tools`, the call as the assistant's `tool_calls`, the result as a `tool` message,
then the answer as `#### N`); RL and held-out prompts are HARD problems. Train and test are disjoint
by the same question-hash split as minimind.data.synthetic_math.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

from .synthetic_math import MAX_TRIES, MathProblem, split_of

DIFFICULTIES = ("easy", "hard")


def _problem(question: str, expression: str, value: int, level: str) -> MathProblem:
    # the solution field holds the calculator expression (what the tool call carries)
    return MathProblem(question, str(value), expression, DIFFICULTIES.index(level) + 5)


def _sum_of(xs: list[int], level: str) -> MathProblem:
    expr = " + ".join(map(str, xs))
    return _problem(f"What is {expr}?", expr, sum(xs), level)


def _product_of(x: int, y: int, level: str) -> MathProblem:
    return _problem(f"What is {x} * {y}?", f"{x} * {y}", x * y, level)


def _number(rng: random.Random, lo: int, hi: int) -> int:
    """A number of lo..hi digits, the LENGTH drawn uniformly (so short and long numbers are as common)."""
    d = rng.randint(lo, hi)
    return rng.randint(10 ** (d - 1), 10 ** d - 1)


def _easy(rng: random.Random) -> MathProblem:
    kind = rng.randrange(3)
    if kind == 0:
        return _sum_of([_number(rng, 2, 5) for _ in range(2)], "easy")
    if kind == 1:   # short multiplication: one single-digit factor, on either side
        a, d = _number(rng, 2, 5), rng.randint(2, 9)
        return _product_of(*((a, d) if rng.random() < 0.5 else (d, a)), "easy")
    return _sum_of([_number(rng, 1, 2) for _ in range(rng.randint(2, 4))], "easy")


def _hard(rng: random.Random) -> MathProblem:
    if rng.random() < 0.5:   # long multiplication: 4-digit x 3-digit
        a = rng.randint(1000, 9999)
        return _product_of(a, rng.randint(100, 999), "hard")
    return _sum_of([rng.randint(100, 999) for _ in range(3)], "hard")   # three 3-digit numbers


GENERATORS: dict[str, Callable[[random.Random], MathProblem]] = {"easy": _easy, "hard": _hard}


def tool_problems(n: int, seed: int, split: str, level: str) -> list[MathProblem]:
    """`n` distinct problems of `level` ('easy' | 'hard') in `split` ('train' | 'test')."""
    if split not in ("train", "test") or level not in GENERATORS:
        raise ValueError(f"tool_problems: split must be train|test (got {split!r}), level easy|hard (got {level!r})")
    rng = random.Random(f"{seed}-{level}-{split}")
    seen: set[str] = set()
    out: list[MathProblem] = []
    misses = 0
    while len(out) < n and misses < MAX_TRIES:
        p = GENERATORS[level](rng)
        if p.question in seen or split_of(p.question) != split:
            misses += 1
            continue
        seen.add(p.question)
        out.append(p)
        misses = 0
    return out


def tool_chat(p: MathProblem, tools: Sequence[dict]) -> dict:
    """One SFT conversation: question (with the tool list) -> tool call -> result -> '#### N'."""
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": p.solution}}}
    return {"conversations": [
        {"role": "user", "content": p.question, "tools": list(tools)},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": p.answer},
        {"role": "assistant", "content": f"#### {p.answer}"},
    ]}


def copy_chats(n: int, seed: int) -> list[dict]:
    """`n` plain chats asking to repeat a list of 2-5 numbers (1-7 digits) joined by ", ", " " or "; ":
    copying without arithmetic or tools, which the small model needs to carry long numbers into a call
    and 7-digit results into its answer (the easy problems end at 6 digits)."""
    rng = random.Random(f"{seed}-copy")
    out = []
    for _ in range(n):
        text = rng.choice((", ", " ", "; ")).join(str(_number(rng, 1, 7)) for _ in range(rng.randint(2, 5)))
        out.append({"conversations": [{"role": "user", "content": f"Repeat exactly: {text}"},
                                      {"role": "assistant", "content": text}]})
    return out


def tool_prompts(problems: Sequence[MathProblem], tools: bool = True, prefix: str = "") -> list[dict]:
    """RL / evaluation prompts for rollout.tool_worker: {"messages", "key", "answer", "tools"}."""
    return [{"messages": [{"role": "user", "content": p.question}], "answer": p.answer, "tools": tools,
             "key": f"{prefix}{'tool' if tools else 'plain'}:{p.question}"} for p in problems]
