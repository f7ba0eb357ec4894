"""Step stats reduce by what each one declares where it is made (contract.stats): means by weight,
maxima as maxima, counts as sums, over micro-batches and over learner ranks."""
from __future__ import annotations

import pickle

import torch

from contract.stats import Reduce, Stat, maximum, reduction, total
from learner.learner import StatReducer, merge_batch_stats
from learner.losses import policy_loss


def test_a_stat_is_its_float_and_keeps_its_reduction_through_pickle():
    s = maximum(2.5)
    assert s == 2.5 and isinstance(s, float) and s + 1 == 3.5
    back = pickle.loads(pickle.dumps({"x": s, "n": total(3), "m": 1.0}))
    assert [reduction(back[k]) for k in ("x", "n", "m")] == [Reduce.MAX, Reduce.SUM, Reduce.MEAN]
    assert repr(Stat(1.0, Reduce.SUM)) == "sum(1.0)"


def test_micro_batch_stats_reduce_each_by_its_own_rule():
    # two micro-batches of 1 and 3 tokens: the mean weighs by tokens, the max is the largest ratio
    red = StatReducer()
    red.add({"pg_loss": 1.0, "ratio_max": maximum(3.0), "clipped": total(1)}, tokens=1)
    red.add({"pg_loss": 2.0, "ratio_max": maximum(1.5), "clipped": total(2)}, tokens=3)
    other = StatReducer()          # another learner rank's micro-batch
    other.add({"pg_loss": 0.0, "ratio_max": maximum(4.0), "clipped": total(5)}, tokens=4)
    red.merge(other)
    assert red.result() == {"pg_loss": (1 * 1 + 3 * 2 + 4 * 0) / 8, "ratio_max": 4.0, "clipped": 8.0}


def test_policy_loss_reports_the_true_ratio_max_across_micro_batches():
    """The GRPO/CISPO `ratio_max` was a token-weighted mean of per-micro maxima; it is the step's max."""
    torch.manual_seed(0)
    logp, old = torch.randn(4, 6), torch.randn(4, 6)
    mask, adv = torch.ones(4, 6), torch.randn(4)
    _, whole = policy_loss(logp, old, adv, mask)
    red = StatReducer()
    for rows in (slice(0, 1), slice(1, 4)):
        _, stats = policy_loss(logp[rows], old[rows], adv[rows], mask[rows])
        red.add(stats, tokens=float(mask[rows].sum()))
    assert red.result()["ratio_max"] == whole["ratio_max"] == float(torch.exp(logp - old).max())


def test_batch_stats_of_ranks_merge_by_rows_max_and_sum():
    a = {"reward_mean": 1.0, "rows": total(2), "logprob_gap": maximum(1e-6)}
    b = {"reward_mean": 0.0, "rows": total(6), "logprob_gap": maximum(3e-6)}
    out = merge_batch_stats([a, b])
    assert out == {"reward_mean": 0.25, "rows": 8.0, "logprob_gap": 3e-6}
    assert reduction(out["rows"]) is Reduce.SUM
