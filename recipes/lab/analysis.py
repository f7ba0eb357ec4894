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


def weight_profile(weights: torch.Tensor, batch: RolloutBatch) -> dict[str, object]:
    """Where a loss's per-token weights |d loss / d logp| go on `batch`:
    - row_share: each response's share of the total;
    - zero_variance_share: the share on groups whose rewards are all equal (GRPO-style advantages give
      them 0; a critic or a tracker baseline does not, nor does a KL term);
    - long_over_short: mean weight per token of the informative responses longer than their median
      length over that of the others (< 1: long responses get less per token);
    - per_token_by_length: mean weight per token of each informative response, with its length."""
    w = weights.abs() * batch.response_mask
    lengths = batch.response_mask.sum(-1)
    total = float(w.sum())
    per_row = w.sum(-1)
    per_token = per_row / lengths.clamp(min=1)
    informative = informative_rows(batch)
    out: dict[str, object] = {
        "total": total,
        "row_share": (per_row / total).tolist() if total > 0 else [0.0] * len(batch),
        "zero_variance_share": float(per_row[~informative].sum()) / total if total > 0 else 0.0,
        "long_over_short": None,
        "per_token_by_length": [[int(n), float(x)] for n, x in zip(lengths[informative], per_token[informative])],
    }
    if int(informative.sum()) >= 2:
        n = lengths[informative]
        x = per_token[informative]
        long = n > n.median()
        if long.any() and (~long).any() and float(x[~long].mean()) > 0:
            out["long_over_short"] = float(x[long].mean() / x[~long].mean())
    return out


def heat_rows(batch: RolloutBatch, n: int) -> list[int]:
    """`n` informative responses spread from the shortest to the longest (any responses if none vary)."""
    pool = informative_rows(batch).nonzero().squeeze(-1)
    if len(pool) == 0:
        pool = torch.arange(len(batch))
    order = pool[torch.argsort(batch.response_mask[pool].sum(-1), stable=True)]
    picks = torch.linspace(0, len(order) - 1, min(n, len(order))).round().long()
    return [int(order[i]) for i in picks]
