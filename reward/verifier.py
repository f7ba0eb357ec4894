"""Rule-based math answer checking. Pure string handling: nothing here ever calls eval/exec.

    extract_answer(text, mode)  -> the answer string a response commits to (or None)
    parse_number(s)             -> exact value as fractions.Fraction (or None)
    answers_match(pred, truth)  -> exact rational comparison (optional relative tolerance)
    math_reward(response, truth, mode) -> 1.0 / 0.0
    format_reward(response)     -> 1.0 / 0.5 / 0.0 (see its docstring)

Extraction modes (`AnswerMode`):
    hash         GSM8K style: the text after the LAST `####` on its line
    boxed        LaTeX: the content of the LAST `\\boxed{...}` / `\\fbox{...}` (nested braces)
    last_number  the last number in the text (ints, decimals, 1,234, 3/4, \\frac{a}{b}, -5, $5, 50%)
    auto         hash, then boxed, then last_number: the first that finds something

Numbers are compared exactly as rationals, so "0.5" == "1/2" == "0.50" == "\\frac{1}{2}" and
"1,234" == "1234". A percent sign is stripped without rescaling ("50%" == 50), because
GSM8K-style ground truths write percentages as bare numbers.

Everything is linear-time regex work on inputs capped in length, so a hostile response cannot
make the verifier slow, and a string such as "__import__('os').system('x')" is just text that
does not parse as a number.
"""
from __future__ import annotations

import enum
import math
import re
from fractions import Fraction
from typing import Callable

__all__ = [
    "AnswerMode", "extract_answer", "parse_number", "answers_match", "math_reward", "format_reward",
    "MAX_NUMBER_CHARS",
]

MAX_NUMBER_CHARS = 128
"""parse_number refuses longer strings (no giant integers, no quadratic work)."""
_MAX_EXPONENT = 64
"""Largest |exponent| accepted in scientific notation ("1e999999999" would be a memory bomb)."""
_MAX_TEXT_CHARS = 100_000
"""extract_answer only looks at the last this-many characters of a response."""


class AnswerMode(str, enum.Enum):
    HASH = "hash"
    BOXED = "boxed"
    LAST_NUMBER = "last_number"
    AUTO = "auto"


# ----------------------------------------------------------------------------------------
# number parsing
# ----------------------------------------------------------------------------------------
_MINUS_CHARS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\uff0d": "-"})
_LATEX_DROP = re.compile(
    r"\\(?:text|mathrm|textbf|mbox|operatorname)\s*\{[^{}]*\}"   # units: \text{ dollars}
    r"|\\(?:left|right|displaystyle)\b"
    r"|\^\s*\{?\s*\\circ\s*\}?|\u00b0"                            # degrees
    r"|\\[!,;: ]"                                                 # LaTeX spacing
)
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d*)?", re.ASCII)
_DECIMAL = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,3})?", re.ASCII)
_FRAC_TEX = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_TEX_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)", re.ASCII)


def _unsigned(t: str) -> Fraction | None:
    """A plain non-negative number: 12, 12.50, .5, 1,234.5, 1e3 (no sign, no slash)."""
    if _THOUSANDS.fullmatch(t):
        t = t.replace(",", "")
    elif not _DECIMAL.fullmatch(t):
        return None
    _, _, exp = t.lower().partition("e")
    if exp and abs(int(exp)) > _MAX_EXPONENT:
        return None
    return Fraction(t)


def _signed(t: str) -> Fraction | None:
    t = t.strip()
    sign = 1
    while t[:1] in ("-", "+"):
        if t[0] == "-":
            sign = -sign
        t = t[1:].lstrip()
    v = _unsigned(t)
    return None if v is None else sign * v


def _ratio(num: str, den: str) -> Fraction | None:
    a, b = _signed(num), _signed(den)
    if a is None or b is None or b == 0:
        return None
    return a / b


def parse_number(s: object) -> Fraction | None:
    """Exact value of a numeric answer string, or None if it is not a number.

    Accepts: integers, signs (also the unicode minus), decimals ("0.50", ".5"), thousands
    separators ("1,234" - only well-formed groups of three), simple fractions ("-3/4"),
    LaTeX fractions (\\frac{1}{2}, \\dfrac, \\tfrac, \\frac12), a leading/trailing "$",
    a trailing "." (end of sentence), a trailing "%" (stripped, value unchanged), LaTeX units
    and spacing (\\text{ cm}, \\,), an "x = 5" form (the right-hand side is taken), bounded
    scientific notation. ints/Fractions/finite floats are converted directly.
    """
    if isinstance(s, bool) or s is None:
        return None
    if isinstance(s, (int, Fraction)):
        return Fraction(s)
    if isinstance(s, float):
        return Fraction(s) if math.isfinite(s) else None
    if not isinstance(s, str) or len(s) > MAX_NUMBER_CHARS:
        return None
    t = s.translate(_MINUS_CHARS)
    t = _LATEX_DROP.sub("", t)
    t = t.replace("\\$", "").replace("$", "").replace("\\%", "%")
    if "=" in t:
        t = t.rsplit("=", 1)[1]
    t = t.strip().rstrip(".").rstrip()
    if t.endswith("%"):
        t = t[:-1].rstrip()
    while len(t) >= 2 and t[0] + t[-1] in ("{}", "()"):
        t = t[1:-1].strip()
    if not t:
        return None
    # pull a leading sign off so "-\frac{1}{2}" works
    sign, body = 1, t
    while body[:1] in ("-", "+"):
        sign = -sign if body[0] == "-" else sign
        body = body[1:].lstrip()
    for pat in (_FRAC_TEX, _FRAC_TEX_SHORT):
        m = pat.fullmatch(body)
        if m:
            v = _ratio(m.group(1), m.group(2))
            return None if v is None else sign * v
    if body.count("/") == 1:
        num, den = body.split("/")
        v = _ratio(num, den)
        return None if v is None else sign * v
    v = _unsigned(body)
    return None if v is None else sign * v


# ----------------------------------------------------------------------------------------
# answer extraction
# ----------------------------------------------------------------------------------------
_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w.])"                                           # not glued to a word / decimal point
    r"[-+\u2212]?\$?"
    r"(?:\\[dt]?frac\s*\{\s*-?\d+\s*\}\s*\{\s*-?\d+\s*\}"  # \frac{1}{2}
    r"|\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?"               # 1,234.5
    r"|\d+(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?"              # 12, 3.5, 3/4
    r"|\.\d+)"
    r"%?",
    re.ASCII,
)
_HASH = re.compile(r"#{4,}")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed\s+([^\s$]+)")


def _extract_last_number(text: str) -> str | None:
    last = None
    for m in _NUMBER_IN_TEXT.finditer(text):
        last = m
    return None if last is None else last.group(0).strip()


def _extract_hash(text: str) -> str | None:
    marks = list(_HASH.finditer(text))
    if not marks:
        return None
    seg = text[marks[-1].end():].split("\n", 1)[0].strip()
    if not seg:
        return None
    if parse_number(seg) is not None:
        return seg
    # "#### 72 apples" -> "72"; the first number after the marker is the committed answer
    m = _NUMBER_IN_TEXT.search(seg)
    return None if m is None else m.group(0).strip()


def _extract_boxed(text: str) -> str | None:
    starts = list(_BOXED.finditer(text))
    if not starts:
        m = None
        for m in _BOXED_BARE.finditer(text):
            pass
        return None if m is None else m.group(1)
    i = starts[-1].end()
    depth = 1
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                content = text[i:j].strip()
                return content or None
    return None  # unbalanced braces: no committed answer


def _extract_auto(text: str) -> str | None:
    for f in (_extract_hash, _extract_boxed, _extract_last_number):
        a = f(text)
        if a is not None:
            return a
    return None


_EXTRACTORS: dict[AnswerMode, Callable[[str], str | None]] = {
    AnswerMode.HASH: _extract_hash,
    AnswerMode.BOXED: _extract_boxed,
    AnswerMode.LAST_NUMBER: _extract_last_number,
    AnswerMode.AUTO: _extract_auto,
}


def extract_answer(text: str | None, mode: str | AnswerMode = "auto") -> str | None:
    """The answer string `text` commits to under `mode` (see module docstring), or None."""
    extractor = _EXTRACTORS[AnswerMode(mode)]  # ValueError on an unknown mode
    if not text or not isinstance(text, str):
        return None
    return extractor(text[-_MAX_TEXT_CHARS:])


# ----------------------------------------------------------------------------------------
# comparison and rewards
# ----------------------------------------------------------------------------------------
def _norm_text(s: str) -> str:
    return " ".join(s.strip().rstrip(".").lower().split())


def answers_match(pred: str | None, truth: str, rel_tol: float = 0) -> bool:
    """True if `pred` equals `truth` as exact rationals (or within `rel_tol` relative error).

    `truth` may also be a full GSM8K solution ending in "#### N" (its answer is extracted).
    If neither side is numeric, normalised text equality (case/whitespace/trailing ".")
    decides; an empty truth never matches.
    """
    if pred is None or truth is None:
        return False
    p, t = parse_number(pred), parse_number(truth)
    if t is None and isinstance(truth, str):
        t = parse_number(extract_answer(truth, AnswerMode.AUTO))
    if p is None or t is None:
        if p is None and t is None and isinstance(pred, str) and isinstance(truth, str):
            return bool(_norm_text(truth)) and _norm_text(pred) == _norm_text(truth)
        return False
    if p == t:
        return True
    if rel_tol and rel_tol > 0:
        tol = Fraction(str(rel_tol))
        return abs(p - t) <= tol * max(abs(p), abs(t))
    return False


def math_reward(response: str, truth: str, mode: str | AnswerMode = "auto", rel_tol: float = 0) -> float:
    """1.0 if the answer extracted from `response` matches `truth`, else 0.0."""
    return 1.0 if answers_match(extract_answer(response, mode), truth, rel_tol) else 0.0


_FINAL_LINE = re.compile(r"####[ \t]*(\S.*?)")


def format_reward(response: str) -> float:
    """Reward for committing to an answer in GSM8K format.

    1.0  exactly one `####` marker, and the last non-empty line is `#### <number>` (the number
         parses with parse_number; nothing else on that line but an optional trailing ".").
    0.5  exactly one marker followed on its line by a parseable number, but it is not a clean
         final line (text after it, text before it on the line, or trailing lines).
    0.0  no marker, more than one marker, or a marker with no number after it.
    """
    if not response or not isinstance(response, str):
        return 0.0
    text = response[-_MAX_TEXT_CHARS:]
    marks = list(_HASH.finditer(text))
    if len(marks) != 1:
        return 0.0
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    m = _FINAL_LINE.fullmatch(lines[-1]) if lines else None
    if m is not None and parse_number(m.group(1)) is not None:
        return 1.0
    return 0.5 if _extract_hash(text) is not None else 0.0
