"""Tools for multi-turn rollouts: the calculator (exact values, refusals, bounded work, never eval),
the tool registry (schemas, argument checks, errors and timeouts as observation text), parsing of
tool calls in the chat template's format, the environment, and the tool-episode reward scorers."""
from __future__ import annotations

import ast
import builtins
import time
from fractions import Fraction

import pytest
import torch

from reward.actor import RewardConfig, RewardWorker
from contract.batch import RolloutBatch
from rollout.env import Calculator, CalculatorError, Tool, ToolEnv, ToolRegistry, calculator_tool, parse_tool_calls


@pytest.mark.parametrize("expr, value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("2 ** 10", 1024), ("2 ^ 10", 1024), ("-(3 - 5) ** 3", 8),
    ("12345 * 6789", 83810205), ("7 / 4", Fraction(7, 4)), ("1/3 + 1/6", Fraction(1, 2)),
    ("0.1 + 0.2", Fraction(3, 10)), ("2 ** -3", Fraction(1, 8)), ("3 × 4 ÷ 6 − 1", 1), ("1e3", 1000),
    ("1,234 + 1", 1235), ("0.12345678901234567890 * 10", Fraction(12345678901234567890, 10**19)),
    ("+5 - -5", 10), ("347 * 862", 299114),
])
def test_calculator_exact_values(expr, value):
    assert Calculator().evaluate(expr) == value


def test_calculator_text_answers():
    c = Calculator()
    assert c("6 * 7") == "42"
    assert c("7/4") == "7/4 = 1.75"
    assert c("1/3") == "1/3 = 0.333333333333..."
    assert c("-1/8") == "-1/8 = -0.125"


@pytest.mark.parametrize("expr, reason", [
    ("9**9**9", "more than 60 digits"), ("10 ** 61", "more than 60 digits"), ("(2/3) ** -200", "more than 60 digits"),
    ("1 / 0", "division by zero"), ("0 ** -1", "division by zero"), ("2 ** 0.5", "whole-number exponents"),
    ("x + 1", "the name 'x'"), ("__import__('os').system('true')", "function call"),
    ("(1).__class__", "attribute access"), ("7 // 2", "operator //"), ("7 % 2", "operator %"),
    ("'a' * 3", "not a number"), ("True + 1", "not a number"), ("1 +", "cannot parse"), ("", "empty"),
    ("1" * 201, "characters"), ("-" * 40 + "1", "nests deeper"), ("+".join(["1"] * 70), "terms"),
    ("9" * 61, "more than 60 digits"), ("1e400", "out of range"), ("[1]", "List is not allowed"),
])
def test_calculator_refusals(expr, reason):
    with pytest.raises(CalculatorError, match=reason):
        Calculator().evaluate(expr)


def test_calculator_bounded_and_never_evals(monkeypatch):
    """Hostile powers are refused from a size estimate in well under a millisecond each, and no input
    reaches eval/exec or compiles to code (tripwires here: the test's own guard; ast.parse may still
    compile to a syntax tree only)."""
    real_compile = builtins.compile

    def tripwire(*a, **k):
        raise AssertionError("eval/exec called")

    def ast_only(source, filename, mode, flags=0, *a, **k):
        assert flags & ast.PyCF_ONLY_AST, "compiled to code"
        return real_compile(source, filename, mode, flags, *a, **k)

    monkeypatch.setattr(builtins, "eval", tripwire)
    monkeypatch.setattr(builtins, "exec", tripwire)
    monkeypatch.setattr(builtins, "compile", ast_only)
    c = Calculator()
    t0 = time.perf_counter()
    for expr in ("9**9**9", "99**99**99", "2**(2**(2**(2**(2**2))))", "(10**60)**(10**60)", "1.5**1e9"):
        with pytest.raises(CalculatorError):
            c.evaluate(expr)
    assert time.perf_counter() - t0 < 0.05
    assert c("2**199 - 2**199 + 3") == "3"    # 60 digits of intermediate result is fine
    assert c("(1 + 2) * 3 / 4") == "9/4 = 2.25"


def _registry() -> ToolRegistry:
    def slow(seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    def boom() -> str:
        raise RuntimeError("tool exploded")

    reg = ToolRegistry(max_result_chars=20).add(calculator_tool())
    reg.add(Tool("nap", "Sleep.", {"type": "object", "properties": {"seconds": {"type": "number"}},
                                   "required": ["seconds"]}, slow))
    reg.add(Tool("boom", "Fails.", {"type": "object", "properties": {}}, boom))
    reg.add(Tool("echo", "Repeat.", {"type": "object", "properties": {"text": {"type": "string"}}},
                 lambda text="": text))
    return reg


def test_registry_schemas_and_calls():
    reg = _registry()
    assert [s["function"]["name"] for s in reg.schemas()] == ["calculator", "nap", "boom", "echo"]
    assert reg.schemas()[0] == {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression exactly: + - * / ** and parentheses.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}}
    r = reg.call("calculator", {"expression": "123 * 45"})
    assert (r.text, r.ok) == ("5535", True)
    cases = [
        ("calculator", {"expression": "1/0"}, "error: division by zero"),
        ("calculator", {}, "error: calculator: missing argument(s) expression"),
        ("calculator", {"expression": 5}, "error: calculator: argument expression must be a string, got int"),
        ("calculator", {"expression": "1", "x": 1}, "error: calculator: unknown argument(s) x (expected expression)"),
        ("calculator", ["1+1"], "error: calculator: arguments must be a JSON object, got list"),
        ("search", {}, "error: unknown tool 'search' (available: calculator, nap, boom, echo)"),
        ("boom", {}, "error: RuntimeError: tool exploded"),
        ("nap", {"seconds": True}, "error: nap: argument seconds must be a number, got bool"),
    ]
    for name, args, text in cases:
        assert reg.call(name, args, timeout_s=1.0) == type(r)(text, False), (name, args)
    assert reg.call("echo", {"text": "x" * 50}).text == "x" * 20 + "... [cut at 20 characters]"


def test_registry_timeout_is_an_observation():
    reg = _registry()
    t0 = time.perf_counter()
    r = reg.call("nap", {"seconds": 5}, timeout_s=0.2)
    assert (r.text, r.ok) == ("error: nap timed out after 0.2s", False)
    assert time.perf_counter() - t0 < 2.0


def test_registry_rejects_bad_tools():
    reg = _registry()
    with pytest.raises(ValueError, match="already registered"):
        reg.add(calculator_tool())
    with pytest.raises(ValueError, match="type 'object'"):
        Tool("t", "d", {"type": "string"}, str)
    with pytest.raises(ValueError, match="argument 'a' has type 'float'"):
        Tool("t", "d", {"type": "object", "properties": {"a": {"type": "float"}}}, str)
    with pytest.raises(ValueError, match=r"required arguments \['b'\]"):
        Tool("t", "d", {"type": "object", "properties": {}, "required": ["b"]}, str)
    with pytest.raises(ValueError, match="letters, digits"):
        Tool("bad name", "d", {"type": "object", "properties": {}}, str)


def test_parse_tool_calls_in_the_template_format():
    text = ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>'
            '\n<tool_call>\n{"name": "echo", "arguments": "{\\"text\\": \\"hi\\"}"}\n</tool_call>')
    assert parse_tool_calls(text) == [{"name": "calculator", "arguments": {"expression": "2+2"}},
                                      {"name": "echo", "arguments": {"text": "hi"}}]
    assert parse_tool_calls("#### 42") == []
    bad = parse_tool_calls('<tool_call>{"name": calc}</tool_call><tool_call>[1]</tool_call><tool_call>{"name": "x"')
    assert bad[0].startswith("error: the tool call is not valid JSON")
    assert bad[1] == 'error: a tool call is {"name": ..., "arguments": {...}}'
    assert bad[2] == "error: <tool_call> is not closed with </tool_call>"


def test_tool_env_step():
    env = ToolEnv(_registry(), timeout_s=1.0)
    done = env.step([], "#### 5535")
    assert done.done and done.messages == [] and done.calls == 0
    s = env.step([], '<tool_call>\n{"name": "calculator", "arguments": {"expression": "123 * 45"}}\n</tool_call>'
                     '<tool_call>{"name": "boom"}</tool_call><tool_call>oops</tool_call>')
    assert not s.done and (s.calls, s.errors) == (3, 2)
    assert [m["content"] for m in s.messages] == ["5535", "error: RuntimeError: tool exploded",
                                                  "error: the tool call is not valid JSON (Expecting value at character 0)"]
    assert all(m["role"] == "tool" for m in s.messages)


def _episode_batch(turns, calls, errors, texts, answers) -> RolloutBatch:
    B = len(turns)
    z = torch.zeros(B, 2)
    return RolloutBatch(
        prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
        response_ids=torch.ones(B, 2, dtype=torch.long), response_mask=z + 1, logprobs=z,
        group_uid=torch.zeros(B, dtype=torch.long), prompt_keys=["k"] * B, answers=answers, response_text=texts,
        response_attn=torch.ones(B, 2, dtype=torch.long), turns=torch.tensor(turns), tool_calls=torch.tensor(calls),
        tool_errors=torch.tensor(errors))


def test_tool_episode_rewards():
    """The answer is verified on the whole episode ('#### N' of its final turn, not numbers in tool
    results); the format reward is per call ((ok - failed) / calls); each extra turn costs."""
    texts = ["\nuser\n<tool_response>\n5535\n</tool_response>\nassistant\n#### 5535",   # called, right
             "#### 5535",                                                              # in its head, right
             "\nuser\n<tool_response>\n5535\n</tool_response>\nassistant\n#### 12",    # called, wrong
             "\nuser\n<tool_response>\nerror: x\n</tool_response>\nassistant\n#### 5535"]
    batch = _episode_batch([2, 1, 2, 3], [1, 0, 1, 2], [0, 0, 0, 1], texts, ["5535"] * 4)
    worker = RewardWorker(RewardConfig(answer_mode="hash", format_weight=0.0, tool_format_weight=0.2,
                                       extra_turn_penalty=0.05, timeout_s=None))
    scored = worker.score(batch)
    expected = torch.tensor([1 + 0.2 - 0.05, 1.0, 0.2 - 0.05, 1 + 0.0 - 0.1])
    assert torch.allclose(scored.rewards, expected, atol=1e-6), scored.rewards
    assert scored.reward_info["accuracy"] == 0.75
    plain = worker.score(RolloutBatch(**{**batch.__dict__, "response_attn": None, "turns": None,
                                         "tool_calls": None, "tool_errors": None}))
    assert torch.allclose(plain.rewards, torch.tensor([1.0, 1.0, 0.0, 1.0]))   # no episode fields: no tool terms
    with pytest.raises(ValueError, match="tool_format_weight"):
        RewardConfig(tool_format_weight=float("nan"))


def test_tool_math_data():
    """Easy SFT chats render (through the template) a calculator call whose result is the answer, with
    every operand length of the hard set but never its shapes; hard problems are out of the model's
    head (4-digit x 3-digit products, sums of three 3-digit numbers); copy chats repeat numbers with no
    arithmetic; train and test are disjoint; no-tool prompts are the same questions."""
    from minimind.data import synthetic_math as sm
    from minimind.data import tool_math as tm
    from minimind.data.readers import chat_tools
    from minimind.tokenizer import render_chat

    tools = ToolRegistry().add(calculator_tool())
    easy = tm.tool_problems(40, 0, "train", "easy")
    for p in easy:
        msgs, t = chat_tools(tm.tool_chat(p, tools.schemas())["conversations"])
        text = render_chat(msgs, tools=t)
        turn = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
        (call,) = parse_tool_calls(turn)
        assert tools.call(call["name"], call["arguments"]).text == p.answer
        assert text.endswith(f"<|im_start|>assistant\n#### {p.answer}<|im_end|>\n")
    # easy carries every operand length of the hard set in both positions (copying is learnt on
    # them) but never a product of two multi-digit numbers nor a sum of several long numbers
    easy = tm.tool_problems(600, 0, "train", "easy")
    products = [[len(x) for x in p.solution.split(" * ")] for p in easy if "*" in p.solution]
    sums = [[len(x) for x in p.solution.split(" + ")] for p in easy if "+" in p.solution]
    assert all(min(ls) == 1 and max(ls) >= 2 for ls in products)                  # one single-digit factor
    assert {ls.index(1) for ls in products} == {0, 1}                              # on either side
    assert {max(ls) for ls in products} == {2, 3, 4, 5}
    assert all(len(ls) == 2 or max(ls) <= 2 for ls in sums) and {len(ls) for ls in sums} == {2, 3, 4}
    assert max(max(ls) for ls in sums) == 5
    hard_train = tm.tool_problems(300, 0, "train", "hard")
    hard_test = tm.tool_problems(100, 1, "test", "hard")
    assert len(hard_test) == 100 and not {p.question for p in hard_train} & {p.question for p in hard_test}
    assert all(sm.split_of(p.question) == "test" for p in hard_test)
    shapes = {(op, tuple(len(x) for x in p.solution.split(f" {op} "))) for p in hard_train for op in "*+"
              if op in p.solution}
    assert shapes == {("*", (4, 3)), ("+", (3, 3, 3))}
    assert all(Calculator()(p.solution) == p.answer for p in hard_train)
    copies = tm.copy_chats(200, 0)
    for c in copies:
        user, answer = c["conversations"]
        assert user["content"] == f"Repeat exactly: {answer['content']}" and "tools" not in user
        numbers = answer["content"].replace(",", " ").replace(";", " ").split()
        assert 2 <= len(numbers) <= 5 and all(n.isdigit() and 1 <= len(n) <= 7 for n in numbers)
    assert len({c["conversations"][1]["content"] for c in copies}) == 200 and copies == tm.copy_chats(200, 0)
    with_tool, plain = tm.tool_prompts(hard_test[:3]), tm.tool_prompts(hard_test[:3], tools=False)
    assert [p["messages"] for p in with_tool] == [p["messages"] for p in plain]
    assert [p["tools"] for p in with_tool + plain] == [True] * 3 + [False] * 3
    assert len({p["key"] for p in with_tool + plain}) == 6
