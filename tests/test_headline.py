"""The headline run, `python experiments/grpo_math.py`, with tiny settings: what a user reads after it.
SFT demonstrates some difficulty levels (here 1-2) and shows the worked steps in half of its answers; RL
prompts and the held-out set span all levels; the run keeps a held-out curve (overall and per level)
while it trains, says what each stage saw, reports pass@k, and the held-out problems are disjoint from
everything any stage trained on."""
from __future__ import annotations

import json

import pytest

from minimind.data.readers import iter_rows
from rl_helpers import run_grpo_math


def questions(path) -> set[str]:
    return {row.get("prompt") or row.get("question") for _, row in iter_rows(path)}


@pytest.mark.slow
def test_headline_run_curve_slices_and_data_split(ray_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    run = tmp_path / "headline"
    out = run_grpo_math(run, address, "--driver.steps=4", "--driver.eval-every=2", "--eval-size=40",
                        "--eval-samples=8", "--bootstrap.sft-steps=4", "--bootstrap.sft-eval-every=2",
                        "--bootstrap.sft-difficulties=1,2", "--bootstrap.sft-worked-fraction=0.5")

    # the held-out curve: before (step 0), every 2 steps, after (the last step), overall and per level
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in rows if "eval_accuracy" in r]
    assert [r["step"] for r in curve] == [0, 2, 4]
    for r in curve:
        assert {f"eval_accuracy_d{d}" for d in (1, 2, 3, 4)} <= set(r), sorted(r)
        assert all(0.0 <= r[k] <= 1.0 for k in r if k.startswith("eval_accuracy"))
    # before and after also measure the sampled policy: pass@1 <= pass@4 <= pass@8, per level too
    for r in (curve[0], curve[-1]):
        for level in ("", "_d3"):
            p1, p4, p8 = (r[f"eval_sampled_{k}{level}"] for k in ("accuracy", "pass_at_4", "pass_at_8"))
            assert 0.0 <= p1 <= p4 <= p8 <= 1.0
    assert "eval_sampled_accuracy" not in curve[1]     # during the run: greedy only

    # SFT's own held-out curve, every 2 of its updates, per level
    sft = [json.loads(line) for line in (run / "bootstrap" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in sft if "eval_accuracy" in r] == [2, 4]
    # its point at the last update is SFT's end-of-run report (eval.json), not a second pass
    reports = [line for line in out.stdout.splitlines() if "held-out exact-match accuracy" in line]
    assert len(reports) == 1 and reports[0].endswith("the held-out curve's last point"), reports
    assert json.loads((run / "bootstrap" / "sft" / "eval.json").read_text())["accuracy"] == sft[-1]["eval_accuracy"]

    # the summary says what each stage saw and reports every slice
    summary = json.loads((run / "summary.json").read_text())
    data = summary["data"]
    assert "levels 1, 2 only" in data["sft"] and "levels 1, 2, 3, 4" in data["rl"], data
    assert "50% of the answers with their worked solution" in data["sft"], data
    assert "answers only" in data["rl"] and "TEST split" in data["held-out"], data
    assert [s["slice"] for s in summary["slices"]] == ["all", "d1", "d2", "d3", "d4"]
    assert set(summary["slices"][3]) == {"slice", "greedy", "sampled", "pass@4", "pass@8"}
    assert "held-out accuracy before -> after" in out.stdout and "d3" in out.stdout
    # the overall accuracy once: the table's "all" row, not again as rows of its own above the table
    assert [line.split()[0] for line in out.stdout.splitlines() if line.split()[:1] == ["all"]] == ["all"]
    assert "held-out accuracy, greedy" not in out.stdout, out.stdout

    # held-out problems: in no training stage's data (by construction: the TEST split; checked here)
    heldout = questions(run / "data" / "heldout.jsonl")
    assert len(heldout) == 40
    sft_data = run / "bootstrap" / "sft" / "data" / "sft.jsonl"
    chats = [row["conversations"] for _, row in iter_rows(sft_data)]
    seen_sft = {chat[0]["content"] for chat in chats}
    pretrain = "\n".join(row["text"] for _, row in iter_rows(run / "bootstrap" / "pretrain" / "data" / "pretrain.jsonl"))
    assert heldout.isdisjoint(seen_sft) and heldout.isdisjoint(questions(run / "data" / "rl_prompts.jsonl"))
    assert not [q for q in heldout if q in pretrain]
    # and SFT demonstrated only the levels the summary names: one + or - ("What is 47 - 12?"), never
    # a product, three operands (level 3) or a word problem (level 4)
    assert seen_sft and all(q.startswith("What is") and "*" not in q and q.count(" + ") + q.count(" - ") == 1
                            for q in seen_sft), sorted(seen_sft)[:5]
    # half of its answers show the steps ("47 - 12 = 35\n#### 35"), the others only "#### 35"
    worked = sum(" = " in chat[1]["content"] for chat in chats) / len(chats)
    assert all(chat[1]["content"].count("#### ") == 1 for chat in chats) and 0.4 < worked < 0.6, worked
