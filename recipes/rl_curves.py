"""What an RL run's curves.png shows, as data: the stats the driver and the RL stages log, by topic.

Keys a run does not log (PPO's critic in a GRPO run, tool use in a math run, per-difficulty accuracy
when the eval set has no levels) simply draw nothing; stats constant over the run are named in the
figure's footnote instead of drawn (clip_frac and the ratio are flat on an on-policy run).
"""
from __future__ import annotations

from learner.curves import Group, Layout, Panel

RL_CURVES = Layout(
    groups=(
        Group("reward / accuracy", (
            Panel("train (sampled)", ("reward_mean", "accuracy")),
            Panel("held-out", ("eval_accuracy", "eval_sampled_accuracy", "notool_accuracy", "notool_sampled_accuracy")),
            Panel("held-out greedy by difficulty", ("eval_accuracy_d*",), family="eval_accuracy_"),
            Panel("held-out sampled by difficulty", ("eval_sampled_accuracy_d*",), family="eval_sampled_accuracy_"),
        )),
        Group("KL / entropy / update", (
            Panel("KL to reference (per token)", ("kl", "approx_kl")),
            Panel("entropy (per token)", ("entropy",)),
            Panel("groups with one reward (no signal)", ("zero_var_frac",)),
            Panel("clipped fraction", ("clip_frac", "dual_clip_frac", "vf_clip_frac")),
            Panel("importance ratio", ("ratio_mean", "ratio_max")),
            Panel("critic", ("value_loss", "vf_loss")),
            Panel("gradient norm", ("grad_norm",)),
        )),
        Group("lengths", (
            Panel("response tokens", ("response_length", "eval_response_length", "eval_sampled_response_length")),
            Panel("tool use per episode", ("turns", "tool_calls", "tool_errors", "eval_turns", "eval_tool_calls",
                                           "eval_tool_errors")),
        )),
        Group("time", (
            Panel("seconds per step", ("step_seconds", "generate_seconds", "learn_seconds")),
            Panel("generated tokens per second", ("tokens_per_second",)),
            Panel("policy lag (versions)", ("staleness",)),
        )),
    ),
    eval_prefixes=("eval_", "notool_"),
)
