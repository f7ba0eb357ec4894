"""reward.verifier: extraction, exact-rational parsing, matching, math and format rewards."""
from __future__ import annotations

import builtins
from fractions import Fraction

import pytest

from reward.verifier import (AnswerMode, answers_match, extract_answer, format_reward, math_reward,
                             parse_number)


@pytest.mark.parametrize("s, expected", [
    ("42", Fraction(42)),
    ("-7", Fraction(-7)),
    ("+3", Fraction(3)),
    ("\u22125", Fraction(-5)),            # unicode minus
    ("0.5", Fraction(1, 2)),
    ("0.50", Fraction(1, 2)),
    (".5", Fraction(1, 2)),
    ("1/2", Fraction(1, 2)),
    ("-3/4", Fraction(-3, 4)),
    ("6/8", Fraction(3, 4)),
    ("1,234", Fraction(1234)),
    ("1,234,567.25", Fraction(123456725, 100)),
    ("$1,234.50", Fraction(246900, 200)),
    ("-$5", Fraction(-5)),
    ("5.", Fraction(5)),
    (" 18 ", Fraction(18)),
    ("50%", Fraction(50)),
    ("\\frac{1}{2}", Fraction(1, 2)),
    ("\\dfrac{3}{4}", Fraction(3, 4)),
    ("\\tfrac{-2}{6}", Fraction(-1, 3)),
    ("-\\frac{1}{2}", Fraction(-1, 2)),
    ("\\frac12", Fraction(1, 2)),
    ("{5}", Fraction(5)),
    ("(5)", Fraction(5)),
    ("x = 5", Fraction(5)),
    ("18 \\text{ dollars}", Fraction(18)),
    ("90^\\circ", Fraction(90)),
    ("1e3", Fraction(1000)),
    (3, Fraction(3)),
    (0.25, Fraction(1, 4)),
])
def test_parse_number_values(s, expected):
    assert parse_number(s) == expected


@pytest.mark.parametrize("s", [
    None, "", ".", "abc", "5 dollars", "1,23", "12,34,567", "1/0", "3/4/5", "inf", "nan", "1e999999",
    "1e500", "1_000", "\u0663", "--", "$", "\\frac{a}{b}", "0x10", "2**10", "1+1",
    "__import__('os').system('x')", "9" * 500, float("nan"), True,
])
def test_parse_number_rejects(s):
    assert parse_number(s) is None


def test_malicious_string_is_never_executed(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("eval/exec/__import__ must never be called by the verifier")

    evil = "__import__('os').system('x')"
    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    assert parse_number(evil) is None
    for mode in AnswerMode:
        assert extract_answer(evil, mode) is None
    assert not answers_match(evil, "0")
    assert math_reward(evil, "0") == 0.0
    assert math_reward(f"#### {evil}", "0") == 0.0
    assert format_reward(f"#### {evil}") == 0.0


@pytest.mark.parametrize("text, mode, expected", [
    ("so she pays 3 + 4 = 7\n#### 7", "hash", "7"),
    ("#### 1,234", "hash", "1,234"),
    ("####-12", "hash", "-12"),
    ("#### 72 apples", "hash", "72"),
    ("first #### 3\nthen #### 4", "hash", "4"),           # last marker wins
    ("#### \nno number", "hash", None),
    ("no marker 5", "hash", None),
    ("the answer is \\boxed{42}.", "boxed", "42"),
    ("\\boxed{\\frac{1}{2}}", "boxed", "\\frac{1}{2}"),   # nested braces
    ("\\boxed{1} then \\boxed{\\dfrac{3}{4}}", "boxed", "\\dfrac{3}{4}"),
    ("\\boxed{{1}{2}", "boxed", None),                    # unbalanced
    ("\\boxed 7", "boxed", "7"),
    ("1 then 2 then 3.", "last_number", "3"),
    ("x is -7.", "last_number", "-7"),
    ("10 - 3", "last_number", "3"),                        # binary minus is not a sign
    ("costs $1,234.50 in total.", "last_number", "$1,234.50"),
    ("about 3/4 of them", "last_number", "3/4"),
    ("the half is \\frac{1}{2}", "last_number", "\\frac{1}{2}"),
    ("no number here", "last_number", None),
    ("", "auto", None),
    ("step 5 then 6\n#### 11", "auto", "11"),              # hash first
    ("2 and \\boxed{8} and 9", "auto", "8"),               # then boxed
    ("2 and 9", "auto", "9"),                              # then last number
])
def test_extract_answer(text, mode, expected):
    assert extract_answer(text, mode) == expected


def test_extract_answer_unknown_mode():
    with pytest.raises(ValueError):
        extract_answer("5", "regex")


@pytest.mark.parametrize("pred, truth", [
    ("1,234", "1234"), ("0.5", "1/2"), ("\\frac{1}{2}", "0.50"), ("\\dfrac{1}{2}", "1/2"),
    ("-3", "-3"), ("5.", "5"), ("$18", "18"), ("50%", "50"), ("7", "Tom has 7 left.\n#### 7"),
    ("Paris", "paris."),
])
def test_answers_match_positive(pred, truth):
    assert answers_match(pred, truth)


@pytest.mark.parametrize("pred, truth", [
    (None, "5"), ("3", "-3"), ("0.5", "0.51"), ("1,234", "123"), ("5", ""), ("", ""), ("abc", "5"),
    ("5", "abc"), ("0.3333", "1/3"),
])
def test_answers_match_negative(pred, truth):
    assert not answers_match(pred, truth)


def test_answers_match_rel_tol():
    assert answers_match("0.3333", "1/3", rel_tol=1e-3)
    assert not answers_match("0.33", "1/3", rel_tol=1e-3)


@pytest.mark.parametrize("response, truth, mode, reward", [
    ("4 + 8 = 12 apples.\n#### 12", "12", "auto", 1.0),
    ("#### 1,234", "1234", "auto", 1.0),
    ("#### 13", "12", "auto", 0.0),
    ("the answer is \\boxed{\\frac{1}{2}}", "0.5", "auto", 1.0),
    ("the answer is \\boxed{\\frac{1}{2}}", "0.5", "hash", 0.0),
    ("I think 3, no wait, 5.", "5", "last_number", 1.0),
    ("I think 5, no wait, 3.", "5", "last_number", 0.0),
    ("nothing", "5", "auto", 0.0),
    ("#### 5", "", "auto", 0.0),
])
def test_math_reward(response, truth, mode, reward):
    assert math_reward(response, truth, mode) == reward


@pytest.mark.parametrize("response, reward", [
    ("Adding: 3 + 4 = 7.\n#### 7", 1.0),
    ("#### -1,234.5\n\n", 1.0),
    ("#### 7.", 1.0),
    ("#### 7\nI hope that helps", 0.5),     # not the final line
    ("so #### 7", 0.5),                     # marker not at the start of the line
    ("#### 7 apples", 0.5),                 # extra text on the line
    ("#### 7\n#### 8", 0.0),                # two markers
    ("####", 0.0),
    ("#### seven", 0.0),
    ("The answer is 7", 0.0),
    ("", 0.0),
])
def test_format_reward(response, reward):
    assert format_reward(response) == reward


def test_long_hostile_input_scales_linearly():
    """Hostile text 4x longer costs about 4x the time (a backtracking regex would cost 16x or more):
    a ratio within one run, so the machine's load does not decide the outcome."""
    import time

    def seconds(k: int) -> float:
        junk = ("1," * 12_500 * k) + ("{" * 12_500 * k) + "\\boxed{" * 2_500 * k + "#" * 2_500 * k
        t0 = time.perf_counter()
        for mode in AnswerMode:
            extract_answer(junk, mode)
        format_reward(junk)
        return time.perf_counter() - t0

    seconds(1)   # warm-up: compiled patterns, caches
    small, big = min(seconds(1) for _ in range(3)), min(seconds(4) for _ in range(3))
    assert big < 8 * small, (small, big)
