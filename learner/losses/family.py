"""The policy-loss family by name, for ``--loss NAME`` (a typed name → class table, no dispatch on strings).

Every entry has the GRPO stage's interface: ``compute_advantages(rewards, group_uid, old_logp,
ref_logp, mask, all_sum=, lengths=)`` on the full batch (``mask`` the loss mask; ``lengths`` [B] each
row's response length counting every response token — in a multi-turn episode the tool observations
too — which DAPO's overlong shaping measures), a ``kl: KLConfig`` (``kl.in_advantages``, ``penalized_rewards``),
and ``__call__(logp, old_logp, ref_logp, advantages, mask, global_tokens=, global_seqs=, max_len=,
weights=)`` returning ``(loss, stats)``; ``weights`` are the truncated importance weights of
:mod:`learner.losses.tis`. All but CISPO compose the shared ``clip: ClipConfig``.
"""
from __future__ import annotations

from typing import Any, Literal, Union

from .cispo import CISPOLoss
from .dapo import DAPOLoss
from .dr_grpo import DrGRPOLoss
from .grpo import GRPOLoss
from .gspo import GSPOLoss

__all__ = ["PolicyLossName", "PolicyLoss", "POLICY_LOSSES", "make_policy_loss", "dynamic_sampling"]

PolicyLossName = Literal["grpo", "dr_grpo", "dapo", "gspo", "cispo"]
PolicyLoss = Union[GRPOLoss, DrGRPOLoss, DAPOLoss, GSPOLoss, CISPOLoss]

POLICY_LOSSES: dict[str, type] = {
    "grpo": GRPOLoss,
    "dr_grpo": DrGRPOLoss,
    "dapo": DAPOLoss,
    "gspo": GSPOLoss,
    "cispo": CISPOLoss,
}


def make_policy_loss(name: str, **fields: Any) -> PolicyLoss:
    """The loss called ``name`` with its paper defaults, ``fields`` overriding them."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; valid: {', '.join(POLICY_LOSSES)} (--loss)")
    return POLICY_LOSSES[name](**fields)


def dynamic_sampling(loss: PolicyLoss) -> bool:
    """Whether the loss's algorithm drops zero-variance groups and refills the batch (DAPO)."""
    return isinstance(loss, DAPOLoss)
