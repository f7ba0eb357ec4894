"""pass@k and per-slice accuracy of an evaluation, against hand computation and brute force."""
from __future__ import annotations

import itertools

import pytest

from recipes.eval_stats import outcome_stats, pass_at_k


@pytest.mark.parametrize("n,c,k", [(8, 0, 4), (8, 2, 4), (8, 7, 1), (8, 3, 8), (4, 1, 2)])
def test_pass_at_k_is_the_fraction_of_k_subsets_holding_a_right_sample(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - 15 / 70)   # 1 - C(6,4)/C(8,4)


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_outcome_stats_overall_and_per_slice():
    correct = {0: [1, 0, 0, 0], 1: [1, 1, 1, 1], 2: [0, 0, 0, 0]}
    slices = {0: "d1", 1: "d1", 2: "d4"}
    out = outcome_stats("eval_sampled", correct, slices, ks=(2, 4, 8))
    assert out["eval_sampled_accuracy"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert out["eval_sampled_accuracy_d1"] == pytest.approx(0.625) and out["eval_sampled_accuracy_d4"] == 0.0
    assert out["eval_sampled_pass_at_2_d1"] == pytest.approx((0.5 + 1) / 2)     # 1 - C(3,2)/C(4,2) = 0.5
    assert out["eval_sampled_pass_at_4"] == pytest.approx(2 / 3)
    assert not [k for k in out if "pass_at_8" in k]          # 4 samples: no pass@8
    # one slice (or none named): no per-slice keys
    assert set(outcome_stats("eval", {0: [1], 1: [0]}, {0: "d2", 1: "d2"})) == {"eval_accuracy"}
