"""Seeded synthetic math corpora (no download) for every training stage.

Difficulty levels:
  1  a + b with single digits                      "What is 3 + 4?"
  2  two-digit + and - (never negative)            "What is 47 - 12?"
  3  a * b up to 12 * 12, or three operands        "What is 12 + 7 - 5?"
  4  short two-step word problems                  "Tom has 12 apples. He buys 5 bags ..."

Solutions are deliberately short — one `x op y = z` line per step, then `#### N` — so a
tiny model can learn the format on a 2-core CPU in minutes, and GSM8K-style verifiers
read the final answer.

Split: a problem is in "test" iff a hash of its question text falls in bucket 0 of 10, so
train and test are disjoint by construction, whatever the seed or generation order.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

N_BUCKETS = 10  # test split = bucket 0, i.e. ~10% of all questions
MAX_TRIES = 1000  # consecutive duplicate/other-split draws before a level counts as exhausted


@dataclass(frozen=True)
class MathProblem:
    question: str
    answer: str  # the final number, as text
    solution: str  # short worked answer ending in "#### answer"
    difficulty: int


def split_of(question: str) -> str:
    """'test' for ~10% of question texts (stable hash bucket), else 'train'."""
    bucket = int(hashlib.sha256(question.encode("utf-8")).hexdigest()[:8], 16) % N_BUCKETS
    return "test" if bucket == 0 else "train"


# ----- generators -------------------------------------------------------------------------

Step = tuple[int, str, int, int]  # (x, op, y, result)

_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda x, y: x + y, "-": lambda x, y: x - y,
    "*": lambda x, y: x * y, "/": lambda x, y: x // y,
}


def _step(x: int, op: str, y: int) -> Step:
    if op == "/":
        assert y != 0 and x % y == 0, "division steps are exact by construction"
    return (x, op, y, _OPS[op](x, y))


def _problem(question: str, steps: Sequence[Step], difficulty: int) -> MathProblem:
    lines = [f"{x} {op} {y} = {z}" for x, op, y, z in steps]
    answer = str(steps[-1][3])
    return MathProblem(question, answer, "\n".join(lines) + f"\n#### {answer}", difficulty)


def _gen_d1(rng: random.Random) -> MathProblem:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return _problem(f"What is {a} + {b}?", [_step(a, "+", b)], 1)


def _gen_d2(rng: random.Random) -> MathProblem:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    op = rng.choice("+-")
    if op == "-" and a < b:
        a, b = b, a  # keep results non-negative: negatives are a different skill
    return _problem(f"What is {a} {op} {b}?", [_step(a, op, b)], 2)


def _gen_d3(rng: random.Random) -> MathProblem:
    if rng.random() < 0.5:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return _problem(f"What is {a} * {b}?", [_step(a, "*", b)], 3)
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    op1, op2 = rng.choice("+-"), rng.choice("+-")
    if op1 == "-" and a < b:
        a, b = b, a
    s1 = _step(a, op1, b)
    c = rng.randint(1, 50) if op2 == "+" else rng.randint(0, s1[3])
    # left to right, only + and -, so the written order is also the evaluation order
    return _problem(f"What is {a} {op1} {b} {op2} {c}?", [s1, _step(s1[3], op2, c)], 3)


_NAMES = [("Tom", "He"), ("Anna", "She"), ("Sam", "He"), ("Mia", "She"), ("Ben", "He"),
          ("Lily", "She"), ("Max", "He"), ("Zoe", "She")]
_THINGS = ["apples", "pencils", "marbles", "stickers", "cards", "stamps"]
_FOODS = ["cookies", "candies", "grapes", "nuts"]


def _gen_d4(rng: random.Random) -> MathProblem:
    name, he = rng.choice(_NAMES)
    thing, food = rng.choice(_THINGS), rng.choice(_FOODS)
    kind = rng.randrange(5)
    if kind == 0:
        a, b, c = rng.randint(2, 20), rng.randint(2, 9), rng.randint(2, 9)
        s1 = _step(b, "*", c)
        q = (f"{name} has {a} {thing}. {he} buys {b} bags of {c} {thing}. "
             f"How many {thing} does {name} have now?")
        steps = [s1, _step(a, "+", s1[3])]
    elif kind == 1:
        b, c = rng.randint(2, 6), rng.randint(2, 6)
        a = b * c + rng.randint(1, 20)
        s1 = _step(b, "*", c)
        q = (f"{name} has {a} {thing}. {he} gives {b} friends {c} {thing} each. "
             f"How many {thing} does {name} have left?")
        steps = [s1, _step(a, "-", s1[3])]
    elif kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        s1 = _step(a, "*", b)
        q = (f"A box holds {a} {thing}. {name} buys {b} boxes and loses {c} {thing}. "
             f"How many {thing} does {name} have?")
        steps = [s1, _step(s1[3], "-", c)]
    elif kind == 3:
        a, b, c = rng.randint(2, 15), rng.randint(2, 9), rng.randint(1, 20)
        s1 = _step(a, "*", b)
        q = (f"{name} reads {a} pages a day for {b} days, then {c} more pages. "
             f"How many pages does {name} read in total?")
        steps = [s1, _step(s1[3], "+", c)]
    else:
        b, share = rng.randint(2, 6), rng.randint(2, 9)
        a, c = b * share, rng.randint(1, share - 1)
        s1 = _step(a, "/", b)
        q = (f"{a} {food} are shared equally among {b} kids. Each kid then eats {c}. "
             f"How many {food} does each kid have left?")
        steps = [s1, _step(s1[3], "-", c)]
    return _problem(q, steps, 4)


GENERATORS: dict[int, Callable[[random.Random], MathProblem]] = {
    1: _gen_d1, 2: _gen_d2, 3: _gen_d3, 4: _gen_d4,
}


def generate_problems(n: int, seed: int = 0, split: str = "train",
                      difficulties: Sequence[int] = (1, 2, 3, 4)) -> list[MathProblem]:
    """`n` distinct problems of `split`, cycling through `difficulties` in turn.

    Deterministic for (n, seed, split, difficulties). A level whose question space runs
    out (level 1 has only 100 questions) is dropped from the rotation with a warning, so
    the result can be shorter than `n` — never padded with duplicates.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    unknown = set(difficulties) - set(GENERATORS)
    if unknown or not difficulties:
        raise ValueError(f"difficulties must be a non-empty subset of {sorted(GENERATORS)}")
    rng = random.Random(seed)
    active = list(dict.fromkeys(difficulties))
    seen: set[str] = set()
    out: list[MathProblem] = []
    turn = 0
    while len(out) < n and active:
        d = active[turn % len(active)]
        for _ in range(MAX_TRIES):
            p = GENERATORS[d](rng)
            if p.question not in seen and split_of(p.question) == split:
                seen.add(p.question)
                out.append(p)
                turn += 1
                break
        else:
            active.remove(d)
            logger.warning("difficulty %d exhausted after %d %s problems", d,
                           sum(p.difficulty == d for p in out), split)
    if len(out) < n:
        logger.warning("generate_problems: only %d distinct %s problems (asked %d)",
                       len(out), split, n)
    return out


# ----- exporters --------------------------------------------------------------------------

def arithmetic_facts() -> list[str]:
    """Addition/multiplication tables and counting text for pretraining.

    A fact whose question would land in the test split ("What is a + b?") is left out,
    so pretraining never sees a test answer.
    """
    texts = []
    for a in range(10):
        lines = [f"{a} + {b} = {a + b}" for b in range(10)
                 if split_of(f"What is {a} + {b}?") == "train"]
        texts.append("\n".join(lines))
    for a in range(2, 13):
        lines = [f"{a} * {b} = {a * b}" for b in range(2, 13)
                 if split_of(f"What is {a} * {b}?") == "train"]
        texts.append("\n".join(lines))
    for start in range(0, 100, 10):
        texts.append("Counting: " + ", ".join(str(i) for i in range(start, start + 12)) + ".")
        texts.append(" ".join(f"After {i} comes {i + 1}." for i in range(start, start + 10)))
    return [t for t in texts if t]


def pretrain_texts(problems: Iterable[MathProblem], facts: bool = True) -> list[str]:
    texts = [f"{p.question}\n{p.solution}" for p in problems]
    return texts + (arithmetic_facts() if facts else [])


def shows_work(question: str, worked_fraction: float) -> bool:
    """Whether the SFT chat of `question` shows the worked steps: true for a `worked_fraction` of question
    texts (a stable hash, like split_of, so a smaller fraction's worked chats are a subset of a larger one's)."""
    u = int(hashlib.sha256(f"worked:{question}".encode("utf-8")).hexdigest()[:8], 16) / 16 ** 8
    return u < worked_fraction


def answer_only(p: MathProblem) -> str:
    """The answer without its steps, in the format the verifiers read."""
    return f"#### {p.answer}"


def sft_records(problems: Iterable[MathProblem], worked_fraction: float = 1.0) -> list[dict]:
    """SFT chats: the worked solution for a `worked_fraction` of the problems (shows_work), the answer
    alone for the rest."""
    return [{"conversations": [{"role": "user", "content": p.question},
                               {"role": "assistant", "content": p.solution if shows_work(p.question, worked_fraction)
                                else answer_only(p)}]}
            for p in problems]


def wrong_solution(p: MathProblem, rng: random.Random) -> str:
    """Same format as the solution, but the last step's result (and ####) is off by 1-3."""
    lines = p.solution.split("\n")
    lhs, result = lines[-2].rsplit(" = ", 1)
    right = int(result)
    choices = [right + d for d in (-3, -2, -1, 1, 2, 3) if right + d >= 0]
    wrong = rng.choice(choices)
    return "\n".join(lines[:-2] + [f"{lhs} = {wrong}", f"#### {wrong}"])


def dpo_records(problems: Iterable[MathProblem], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for p in problems:
        user = {"role": "user", "content": p.question}
        out.append({"chosen": [user, {"role": "assistant", "content": p.solution}],
                    "rejected": [user, {"role": "assistant", "content": wrong_solution(p, rng)}]})
    return out


def rl_records(problems: Iterable[MathProblem]) -> list[dict]:
    """RL prompt records; "slice" names the difficulty ("d3"), by which evaluations report accuracy."""
    return [{"prompt": p.question, "answer": p.answer, "slice": f"d{p.difficulty}"} for p in problems]


def write_jsonl(records: Iterable[Mapping], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def corpus_problems(n: int, seed: int, split: str, difficulties: Sequence[int]) -> list[MathProblem]:
    """The problems of `difficulties` among the seed's `n` problems of every level: fewer levels give a
    subset of the same problems (what the built-in corpus and its tokenizer are made of)."""
    keep = set(difficulties)
    return [p for p in generate_problems(n, seed, split) if p.difficulty in keep]


def write_corpus(out_dir: str | Path, n_train: int = 2000, n_test: int = 200, seed: int = 0,
                 difficulties: Sequence[int] = (1, 2, 3, 4), worked_fraction: float = 1.0) -> dict[str, Path]:
    """Write every stage's file for one seed: pretrain/sft/dpo/rl (train) + rl_test. `difficulties` keeps
    those levels of the seed's `n_train` problems (of every level): a corpus of fewer levels is a subset
    of the full one, so a stage on levels 1-2 trains on problems a stage on every level also saw.
    `worked_fraction` of the SFT chats show the worked steps (sft_records); every other file always does."""
    out = Path(out_dir)
    train = corpus_problems(n_train, seed, "train", difficulties)
    test = corpus_problems(n_test, seed, "test", difficulties)
    return {
        "pretrain": write_jsonl(({"text": t} for t in pretrain_texts(train)), out / "pretrain.jsonl"),
        "sft": write_jsonl(sft_records(train, worked_fraction), out / "sft.jsonl"),
        "dpo": write_jsonl(dpo_records(train, seed), out / "dpo.jsonl"),
        "rl": write_jsonl(rl_records(train), out / "rl_train.jsonl"),
        "rl_test": write_jsonl(rl_records(test), out / "rl_test.jsonl"),
        "problems_test": write_jsonl((asdict(p) for p in test), out / "problems_test.jsonl"),
    }
