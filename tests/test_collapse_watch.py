"""recipes.watch.CollapseWatcher on synthetic stats: each collapse signal warns once, naming the step; a
healthy run and a run that never scored stay quiet."""
from __future__ import annotations

from recipes.watch import CollapseWatcher


def _feed(watcher: CollapseWatcher, rows: list[dict]) -> list[tuple[int, str]]:
    return [(step, m) for step, row in enumerate(rows, start=1) for m in watcher.update(step, row)]


def test_healthy_noisy_run_is_quiet():
    rows = [{"reward_mean": 0.3 + 0.05 * (i % 3), "accuracy": 0.3, "entropy": 1.0 - 0.005 * i, "kl": 0.01 * i / 40}
            for i in range(40)]
    assert _feed(CollapseWatcher(), rows) == []


def test_reward_falling_to_zero_warns_once_at_the_step_it_is_clear():
    rows = [{"reward_mean": 0.34, "entropy": 1.0}] * 5 + [{"reward_mean": 0.0, "entropy": 1.0}] * 10
    warnings = _feed(CollapseWatcher(window=5), rows)
    assert [s for s, _ in warnings] == [10]          # five steps at zero after a start of 0.34
    assert "step 10" in warnings[0][1] and "reward_mean" in warnings[0][1] and "0.340" in warnings[0][1]


def test_a_policy_that_never_scored_is_no_collapse():
    assert _feed(CollapseWatcher(), [{"accuracy": 0.0, "reward_mean": 0.0}] * 20) == []


def test_entropy_collapse_and_exploding_kl():
    rows = [{"entropy": 2.0, "kl": 0.01}] * 5 + [{"entropy": 0.1, "kl": 0.02}, {"entropy": 0.1, "kl": 5.0},
                                                 {"entropy": 0.1, "kl": 6.0}]
    warnings = _feed(CollapseWatcher(), rows)
    assert [(s, m.split(": ", 2)[-1].split()[0]) for s, m in warnings] == [(6, "entropy"), (7, "KL")]


def test_a_signal_that_recovers_and_collapses_again_warns_again():
    w = CollapseWatcher(kl_max=1.0)
    steps = [s for s, _ in _feed(w, [{"kl": 2.0}, {"kl": 3.0}, {"kl": 0.1}, {"kl": 4.0}])]
    assert steps == [1, 4]
