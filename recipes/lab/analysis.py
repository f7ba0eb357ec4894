"""What the trials say side by side: the cosine between every two losses' first gradients (same weights,
same batch), and where each loss puts its weight: on which responses (long or short, informative groups
or groups whose rewards are all equal) and how much per token."""
from __future__ import annotations

import torch

from contract.batch import RolloutBatch
from learner.losses import zero_variance_groups


def cosine_matrix(grads: dict[str, torch.Tensor]) -> list[list[float | None]]:
    """cos(g_a, g_b) for every pair (None where a gradient is 0: no direction), in float64."""
    names = list(grads)
    unit = {n: g.double() / g.double().norm() if g.norm() > 0 else None for n, g in grads.items()}
    return [[float(unit[a] @ unit[b]) if unit[a] is not None and unit[b] is not None else None for b in names]
            for a in names]


def informative_rows(batch: RolloutBatch) -> torch.Tensor:
    """Bool [B]: rows whose group's rewards differ (the rows a group baseline can learn from)."""
    return ~zero_variance_groups(batch.rewards, batch.group_uid)


def _long_over_short(x: torch.Tensor, lengths: torch.Tensor) -> float | None:
    """Mean of `x` over the rows longer than the median length, over its mean on the others."""
    long = lengths > lengths.median()
    if len(x) < 2 or not long.any() or long.all() or float(x[~long].mean()) <= 0:
        return None
    return float(x[long].mean() / x[~long].mean())


def weight_profile(weights: torch.Tensor, advantages: torch.Tensor, batch: RolloutBatch) -> dict[str, object]:
    """Where a loss's per-token weights |d loss / d logp| go on `batch` (`advantages` [B, R]: those the loss
    computed for each token):
    - row_share: each response's share of the total;
    - zero_variance_share: the share on groups whose rewards are all equal (GRPO-style advantages give
      them 0; a critic or a tracker baseline does not, nor does a KL term);
    - long_over_short: mean weight per token of the informative responses longer than their median
      length over that of the others (< 1: long responses get less per token, for whatever reason);
    - per_advantage_long_over_short: the same for the weight per token per unit of the token's advantage,
      which leaves only what the loss's aggregation does with length (1: none; < 1: long responses are
      diluted, as by a per-response mean);
    - per_token_by_length: [length, mean weight per token] of each informative response."""
    mask = batch.response_mask
    w = weights.abs() * mask
    lengths = mask.sum(-1)
    total = float(w.sum())
    per_row = w.sum(-1)
    per_token = per_row / lengths.clamp(min=1)
    per_adv = per_row / (advantages.abs() * mask).sum(-1).clamp(min=1e-12)
    informative = informative_rows(batch) & ((advantages.abs() * mask).sum(-1) > 0)
    return {
        "total": total,
        "row_share": (per_row / total).tolist() if total > 0 else [0.0] * len(batch),
        "zero_variance_share": float(per_row[~informative_rows(batch)].sum()) / total if total > 0 else 0.0,
        "long_over_short": _long_over_short(per_token[informative], lengths[informative]),
        "per_advantage_long_over_short": _long_over_short(per_adv[informative], lengths[informative]),
        "per_token_by_length": [[int(n), float(x)] for n, x in zip(lengths[informative], per_token[informative])],
    }


def heat_rows(batch: RolloutBatch, n: int) -> list[int]:
    """`n` informative responses spread from the shortest to the longest (any responses if none vary)."""
    pool = informative_rows(batch).nonzero().squeeze(-1)
    if len(pool) == 0:
        pool = torch.arange(len(batch))
    order = pool[torch.argsort(batch.response_mask[pool].sum(-1), stable=True)]
    picks = torch.linspace(0, len(order) - 1, min(n, len(order))).round().long()
    return [int(order[i]) for i in picks]
