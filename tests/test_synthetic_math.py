"""Synthetic math: determinism, disjoint splits, correct answers, exporters readable."""
from __future__ import annotations

import re

import pytest

from minimind.data.readers import read_conversations, read_dpo, read_math, read_pretrain
from minimind.data.synthetic_math import (
    MathProblem,
    arithmetic_facts,
    dpo_records,
    generate_problems,
    pretrain_texts,
    rl_records,
    sft_records,
    split_of,
    write_corpus,
    write_jsonl,
)


# ----- a tiny safe arithmetic evaluator (no eval): + - * / with precedence ---------------

def evaluate(expr: str) -> int:
    tokens = re.findall(r"\d+|[-+*/]", expr)
    assert "".join(tokens) == expr.replace(" ", ""), f"unexpected characters in {expr!r}"
    pos = 0

    def number() -> int:
        nonlocal pos
        tok = tokens[pos]
        assert tok.isdigit(), f"number expected in {expr!r}"
        pos += 1
        return int(tok)

    def term() -> int:
        nonlocal pos
        value = number()
        while pos < len(tokens) and tokens[pos] in "*/":
            op = tokens[pos]
            pos += 1
            rhs = number()
            if op == "*":
                value *= rhs
            else:
                assert value % rhs == 0, f"inexact division in {expr!r}"
                value //= rhs
        return value

    value = term()
    while pos < len(tokens):
        op = tokens[pos]
        pos += 1
        value = value + term() if op == "+" else value - term()
    return value


def test_evaluator_itself():
    assert evaluate("2 + 3 * 4") == 14
    assert evaluate("12 + 7 - 5") == 14
    assert evaluate("24 / 4 - 2") == 4


STEP = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")


def check_problem(p: MathProblem) -> None:
    lines = p.solution.split("\n")
    assert lines[-1] == f"#### {p.answer}"
    results: list[int] = []
    question_numbers = [int(x) for x in re.findall(r"\d+", p.question)]
    for line in lines[:-1]:
        m = STEP.match(line)
        assert m, f"bad step line {line!r}"
        x, op, y, z = int(m[1]), m[2], int(m[3]), int(m[4])
        assert evaluate(f"{x} {op} {y}") == z, line
        # every operand comes from the question or an earlier step
        for v in (x, y):
            assert v in question_numbers or v in results, (v, p)
        results.append(z)
    assert str(results[-1]) == p.answer and int(p.answer) >= 0
    if p.difficulty <= 3:
        expr = re.fullmatch(r"What is (.+)\?", p.question)[1]
        assert evaluate(expr) == int(p.answer), p
    else:
        assert len(results) == 2 and len(p.solution) < 40  # short two-step solutions


@pytest.fixture(scope="module")
def train():
    return generate_problems(400, seed=3, split="train")


@pytest.fixture(scope="module")
def test_split():
    return generate_problems(200, seed=3, split="test")


def test_deterministic(train):
    assert generate_problems(400, seed=3, split="train") == train
    assert generate_problems(400, seed=4, split="train") != train


def test_no_duplicates_and_all_difficulties(train, test_split):
    for ps in (train, test_split):
        assert len({p.question for p in ps}) == len(ps)
        assert {p.difficulty for p in ps} == {1, 2, 3, 4}
    assert len(train) == 400


def test_splits_disjoint_across_seeds(train):
    test_questions = {p.question for s in (0, 3, 9) for p in generate_problems(300, s, "test")}
    train_questions = {p.question for s in (0, 3) for p in generate_problems(300, s, "train")}
    assert test_questions and not (test_questions & train_questions)
    assert all(split_of(q) == "test" for q in test_questions)
    assert all(split_of(p.question) == "train" for p in train)


def test_test_split_is_about_ten_percent():
    qs = [f"What is {a} {op} {b}?" for a in range(10, 100) for b in range(10, 100) for op in "+-"]
    frac = sum(split_of(q) == "test" for q in qs) / len(qs)
    assert 0.08 < frac < 0.12


def test_answers_are_correct(train, test_split):
    for p in train + test_split:
        check_problem(p)


def test_exhausted_level_gives_fewer_not_duplicates(caplog):
    ps = generate_problems(500, seed=0, split="test", difficulties=(1,))
    assert 0 < len(ps) <= 100 and len({p.question for p in ps}) == len(ps)
    assert "exhausted" in caplog.text


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate_problems(5, split="dev")
    with pytest.raises(ValueError):
        generate_problems(5, difficulties=(7,))


def test_facts_never_leak_test_answers():
    facts = "\n".join(arithmetic_facts())
    for a in range(10):
        for b in range(10):
            q = f"What is {a} + {b}?"
            assert (f"{a} + {b} = {a + b}" in facts.split("\n")) == (split_of(q) == "train")


def test_exporters_readable(train, tmp_path):
    few = train[:40]
    pre = write_jsonl(({"text": t} for t in pretrain_texts(few)), tmp_path / "pre.jsonl")
    texts = read_pretrain(pre, strict=True).records
    assert texts[0] == f"{few[0].question}\n{few[0].solution}"
    assert len(texts) > len(few)  # plus arithmetic facts

    sft = read_conversations(write_jsonl(sft_records(few), tmp_path / "sft.jsonl"), strict=True)
    assert sft.records[0] == [{"role": "user", "content": few[0].question},
                              {"role": "assistant", "content": few[0].solution}]

    dpo = read_dpo(write_jsonl(dpo_records(few, seed=1), tmp_path / "dpo.jsonl"), strict=True)
    assert len(dpo.records) == len(few)
    for p, pair in zip(few, dpo.records):
        good, bad = pair.chosen[-1]["content"], pair.rejected[-1]["content"]
        assert good == p.solution and bad != good
        wrong = bad.split("#### ")[1]
        assert wrong != p.answer and int(wrong) >= 0
        assert bad.split("\n")[:-2] == good.split("\n")[:-2]  # only the last step differs
        assert bad.split("\n")[-2].endswith(f"= {wrong}")
    assert dpo_records(few, seed=1) == dpo_records(few, seed=1)

    rl = read_math(write_jsonl(rl_records(few), tmp_path / "rl.jsonl"), strict=True)
    assert [(r.prompt, r.answer) for r in rl.records] == [(p.question, p.answer) for p in few]


def test_write_corpus(tmp_path):
    paths = write_corpus(tmp_path / "c", n_train=60, n_test=20, seed=0)
    assert read_conversations(paths["sft"], strict=True).report.n_ok == 60
    assert read_math(paths["rl_test"], strict=True).report.n_ok == 20
    train_q = {r.prompt for r in read_math(paths["rl"], strict=True).records}
    test_q = {r.prompt for r in read_math(paths["rl_test"], strict=True).records}
    assert not train_q & test_q


def test_sft_answers_show_work_for_the_asked_share_and_a_smaller_share_is_a_subset(tmp_path):
    problems = generate_problems(2000, seed=0)
    by_fraction = {}
    for fraction in (0.0, 0.3, 0.6, 1.0):
        chats = read_conversations(write_corpus(tmp_path / str(fraction), n_train=2000, n_test=20, seed=0,
                                                worked_fraction=fraction)["sft"], strict=True).records
        answers = [c[-1]["content"] for c in chats]
        assert len(answers) == len(problems)
        for p, a in zip(problems, answers):   # worked = the full solution, else the verifier's format alone
            assert a in (p.solution, f"#### {p.answer}")
        by_fraction[fraction] = {p.question for p, a in zip(problems, answers) if a == p.solution}
    assert len(by_fraction[0.0]) == 0 and len(by_fraction[1.0]) == len(problems)
    for fraction in (0.3, 0.6):   # 2000 draws: the share is within 4 standard deviations (~0.044)
        assert abs(len(by_fraction[fraction]) / len(problems) - fraction) < 0.045
    assert by_fraction[0.3] < by_fraction[0.6]
    assert [c["conversations"] for c in sft_records(problems[:50])] == \
        [[{"role": "user", "content": p.question}, {"role": "assistant", "content": p.solution}] for p in problems[:50]]
