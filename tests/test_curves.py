"""curves.png (learner/curves.py): what the RL layout draws from a metrics.jsonl written by MetricsLogger,
read back from the returned record of what was drawn and from the PNG itself."""
from __future__ import annotations

import random

import matplotlib.image as mpimg
import pytest

from learner.curves import Group, Layout, Panel, plot_curves
from learner.metrics import MetricsLogger
from recipes.rl_curves import RL_CURVES

STEPS, EVERY = 60, 10


def _rl_run(run_dir, steps: int = STEPS, eval_every: int = EVERY):
    """An RL-like run: noisy reward/accuracy/kl/step time, clip_frac flat at 0 (on-policy), and held-out
    accuracy (overall and by difficulty, d10 included) logged before training and every `eval_every` steps."""
    rng = random.Random(0)

    def evaluation(step):
        out = {"eval_accuracy": 0.70 + step / 1000, "eval_sampled_accuracy": 0.60 + step / 800}
        out.update({f"eval_accuracy_d{d}": 1 - d / 12 + step / 2000 for d in (1, 2, 10)})
        return out

    with MetricsLogger(run_dir, enable_progress=False) as log:
        log.log(0, **evaluation(0))
        for s in range(1, steps + 1):
            acc = 0.6 + s / 600 + rng.gauss(0, 0.05)
            log.log(s, reward_mean=acc, accuracy=acc, kl=s / 2e4 + abs(rng.gauss(0, 1e-4)), clip_frac=0.0,
                    step_seconds=3 + rng.gauss(0, 0.3))
            if s % eval_every == 0:
                log.log(s, **evaluation(s))
    return run_dir / "metrics.jsonl"


def test_rl_curves_group_stats_and_name_the_constant_ones(tmp_path):
    drawn = plot_curves(_rl_run(tmp_path / "run"), tmp_path / "curves.png", RL_CURVES, title="grpo on math")

    assert drawn.omitted == {"clip_frac": "constant 0"}
    panels = {p.title: p for p in drawn.panels}
    assert not any("clip_frac" in p.points for p in drawn.panels)
    assert [p.group for p in drawn.panels] == ["reward / accuracy"] * 3 + ["KL / entropy / update", "time"]
    n_evals = 1 + STEPS // EVERY
    held_out = panels["held-out"]
    assert held_out.points == {"eval_accuracy": n_evals, "eval_sampled_accuracy": n_evals}
    assert held_out.evals == ("eval_accuracy", "eval_sampled_accuracy")
    by_level = panels["held-out greedy by difficulty"]
    assert list(by_level.points) == ["eval_accuracy_d1", "eval_accuracy_d2", "eval_accuracy_d10"]
    assert set(by_level.points.values()) == {n_evals}
    assert panels["train (sampled)"].points == {"reward_mean": STEPS, "accuracy": STEPS}
    assert panels["train (sampled)"].evals == ()   # per-step stats: smoothed, not drawn as evaluations

    # three panels wide (the widest group); "KL" (1 panel) and "time" (1) share the second row; a title
    # band (0.4 in) and one footnote line (0.22 in) at 100 dpi
    assert drawn.size == (3 * 400, 40 + 2 * 300 + 22)
    img = mpimg.imread(drawn.png)
    assert img.shape[:2] == (662, 1200)
    assert img.std() > 0.05
    assert not (tmp_path / "curves.png.tmp").exists()


def test_one_evaluation_point_is_drawn_not_called_constant(tmp_path):
    """A live redraw before the second evaluation: the before-training point is shown."""
    drawn = plot_curves(_rl_run(tmp_path / "run", steps=5), tmp_path / "c.png", RL_CURVES)
    assert {p.title: p for p in drawn.panels}["held-out"].points == {"eval_accuracy": 1, "eval_sampled_accuracy": 1}
    assert "eval_accuracy" not in drawn.omitted


def test_keys_layout_draws_present_keys_and_says_why_not_the_others(tmp_path):
    with MetricsLogger(tmp_path / "run", enable_progress=False) as log:
        for s in range(1, 41):
            log.log(s, loss=1.0 / s + (0.1 if s % 2 else -0.1), lr=1e-3, reward=float("nan"))
    drawn = plot_curves(tmp_path / "run" / "metrics.jsonl", tmp_path / "plots" / "curves.png",
                        Layout.of_keys(["loss", "lr", "reward", "not_logged"]), title="sft", smoothing=0.6)
    assert drawn.png == tmp_path / "plots" / "curves.png"
    assert [list(p.points) for p in drawn.panels] == [["loss"]]
    assert drawn.omitted == {"lr": "constant 0.001", "reward": "no numeric value"}
    # the footnote wraps onto two lines in one panel's width
    assert mpimg.imread(drawn.png).shape[:2] == (40 + 300 + 2 * 22, 400)


def test_a_group_wider_than_the_figure_wraps(tmp_path):
    with MetricsLogger(tmp_path, enable_progress=False) as log:
        for s in range(1, 6):
            log.log(s, **{f"m{i}": s * i for i in range(1, 6)})
    layout = Layout((Group("all", tuple(Panel(f"m{i}", (f"m{i}",)) for i in range(1, 6))),), max_cols=2)
    drawn = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "c.png", layout)
    assert len(drawn.panels) == 5 and not drawn.omitted
    assert mpimg.imread(drawn.png).shape[:2] == drawn.size[::-1] == (3 * 300, 2 * 400)


def test_nothing_to_draw_still_writes_and_bad_smoothing_is_refused(tmp_path):
    with MetricsLogger(tmp_path, enable_progress=False) as log:
        log.log(1, loss=1.0)
    drawn = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "empty.png", Layout.of_keys(["missing"]))
    assert drawn.panels == () and mpimg.imread(drawn.png).shape[:2] == (300, 400)
    with pytest.raises(ValueError, match="smoothing"):
        plot_curves(tmp_path / "metrics.jsonl", tmp_path / "x.png", Layout.of_keys(["loss"]), smoothing=1.0)
