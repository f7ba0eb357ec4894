"""The summary of an RL run: accuracy before/after (greedy and sampled), rewards, time per phase."""
from __future__ import annotations

from typing import Any

from recipes.eval_stats import PASS_AT


def slice_table(before: dict, after: dict, prefix: str = "eval") -> list[dict[str, Any]]:
    """One row per slice of the held-out set ("all" first, then each slice the keys name, e.g. d3):
    greedy, sampled (pass@1) and pass@k before and after, where the evaluation measured them."""
    head = f"{prefix}_accuracy"
    names = ["all"] + sorted(k[len(head) + 1:] for k in after if k.startswith(head + "_"))
    measures = {"greedy": f"{prefix}_accuracy", "sampled": f"{prefix}_sampled_accuracy",
                **{f"pass@{k}": f"{prefix}_sampled_pass_at_{k}" for k in PASS_AT}}
    rows = []
    for name in names:
        suffix = "" if name == "all" else f"_{name}"
        row: dict[str, Any] = {"slice": name}
        for label, key in measures.items():
            if key + suffix in after:
                row[label] = [before.get(key + suffix), after[key + suffix]]
        rows.append(row)
    return rows


def summarize_run(cfg: Any, before: dict, after: dict, history: list[dict], first_step: int, rl_seconds: float,
                  wall_seconds: float, data: dict[str, str] | None = None) -> dict[str, Any]:
    """`before` is the accuracy the RUN started from (kept in the checkpoint across a resume);
    `history` holds this process's steps, from `first_step` on; `data` says what each stage saw."""
    mean = lambda key: (sum(h.get(key, 0.0) for h in history) / len(history)) if history else 0.0  # noqa: E731
    return {
        "algo": cfg.algo, "loss": cfg.loss_name, "steps": first_step + len(history), "steps_this_process": len(history),
        "accuracy_before": before.get("eval_accuracy"), "accuracy_after": after.get("eval_accuracy"),
        "sampled_accuracy_before": before.get("eval_sampled_accuracy"),
        "sampled_accuracy_after": after.get("eval_sampled_accuracy"),
        "reward_first": history[0].get("reward_mean", 0.0) if history else 0.0,
        "reward_last": history[-1].get("reward_mean", 0.0) if history else 0.0,
        "rl_seconds": round(rl_seconds, 1), "wall_seconds": round(wall_seconds, 1),
        "seconds_per_step": round(rl_seconds / max(len(history), 1), 2),
        "generate_seconds_per_step": round(mean("generate_seconds"), 3),
        "learn_seconds_per_step": round(mean("learn_seconds"), 3),
        "tokens_per_second": round(mean("tokens_per_second"), 1),
        "run_dir": cfg.run_dir,
        "data": dict(data or {}),
        "slices": slice_table(before, after),
        "eval_before": before, "eval_after": after,   # every evaluation key (extra held-out sets included)
    }


def actors_peak_memory(actors: Any) -> dict[str, float]:
    """Peak resident memory (MiB) of the driver and of every actor, by name (each asked where it runs)."""
    import ray

    from runtime.memory import peak_rss_mb

    named = actors.named()
    peaks = ray.get([a.__ray_call__.remote(lambda self: peak_rss_mb()) for _, a in named], timeout=60)
    return {"driver": peak_rss_mb(), **{name: p for (name, _), p in zip(named, peaks)}}


def print_summary(s: dict[str, Any]) -> None:
    algo = s["algo"] if s["loss"] == s["algo"] else f"{s['algo']} with the {s['loss']} loss"
    # the held-out accuracy is printed once, in the table below ("all" and each level)
    rows = [("algorithm", algo), ("RL steps (this process)", f"{s['steps']} ({s['steps_this_process']})"),
             ("train reward first -> last step", f"{s['reward_first']:.3f} -> {s['reward_last']:.3f}"),
             ("seconds per RL step", s["seconds_per_step"]),
             ("  generate / learn", f"{s['generate_seconds_per_step']} / {s['learn_seconds_per_step']}"),
             ("rollout tokens/s", s["tokens_per_second"]), ("RL wall time (s)", s["rl_seconds"]),
             ("total wall time (s)", s["wall_seconds"]), ("outputs", s["run_dir"])]
    rows += [(f"peak memory, {name} (MiB)", mb) for name, mb in (s.get("peak_memory_mb") or {}).items()]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows) + "\n")
    for stage, what in s.get("data", {}).items():
        print(f"  {stage}: {what}")
    table = [r for r in s.get("slices", []) if len(r) > 1]
    if table:
        cols = [c for c in ("greedy", "sampled", "pass@4", "pass@8") if any(c in r for r in table)]
        cell = lambda v: "   -   " if v is None else f"{100 * v:5.1f}%"  # noqa: E731
        print(f"\n  held-out accuracy before -> after\n  {'slice':<6}" + "".join(f"  {c:>21}" for c in cols))
        for r in table:
            print(f"  {r['slice']:<6}" + "".join(
                f"  {cell(r[c][0]) + ' -> ' + cell(r[c][1]):>21}" if c in r else f"  {'':>21}" for c in cols))
    print()
