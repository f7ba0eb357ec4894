"""The loss lab, end to end: the batch and the starting weights, every loss's k updates from them, the
report (loss_lab.json and .png), the replay of a recorded step, the mismatch report (mismatch.json and
.png), and a table on stdout."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from recipes.cli import config_to_dict, parse_config
from recipes.errors import run_or_exit
from recipes.evaluate import evaluate_math, heldout_problems
from recipes.lab.analysis import cosine_matrix, heat_rows, informative_rows, weight_profile
from recipes.lab.config import LabConfig
from recipes.lab.mismatch import mismatch_report
from recipes.lab.plots import loss_figure, mismatch_figure
from recipes.lab.replay import replay_step
from recipes.lab.roster import lab_learner, lab_stage
from recipes.lab.scoring import batch_log_softmax
from recipes.lab.start import LabStart, lab_start
from recipes.lab.trial import Probe, Trial, run_trial
from recipes.seeds import derive_seed

REPORTS = ("loss_lab.json", "loss_lab.png", "mismatch.json", "mismatch.png")


def check_out_dir(cfg: LabConfig) -> Path:
    out = Path(cfg.out_dir)
    found = [n for n in REPORTS if (out / n).exists()]
    if found and not cfg.overwrite:
        raise ValueError(f"--out-dir {out} holds an earlier report ({', '.join(found)}): pass --overwrite to "
                         f"replace it, or choose another --out-dir")
    return out


def make_probe(cfg: LabConfig, start: LabStart) -> Probe | None:
    """Greedy exact-match accuracy on a fixed slice of the held-out TEST split (recipes.evaluate)."""
    if not cfg.probe_size:
        return None
    tok = start.tokenizer
    problems = heldout_problems(cfg.probe_size, derive_seed(cfg.seed, "lab-probe"))
    return lambda model: evaluate_math(model, tok, problems, max_new_tokens=start.budget)["accuracy"]


def batch_summary(start: LabStart) -> dict[str, Any]:
    b = start.batch
    lengths = b.response_mask.sum(-1)
    return {"rows": len(b), "groups": len(torch.unique(b.group_uid)), "informative_rows": int(informative_rows(b).sum()),
            "reward_mean": float(b.rewards.mean()), "accuracy": b.reward_info.get("accuracy"),
            "response_length_mean": float(lengths.mean()), "response_length_max": int(lengths.max()),
            "temperature": b.temperature, "budget": start.budget, "engine": b.meta.get("engine", "?")}


def loss_entry(cfg: LabConfig, start: LabStart, trial: Trial, probe_before: float | None) -> dict[str, Any]:
    ups = trial.updates
    return {
        "config": config_to_dict(cfg.loss(trial.name, start.budget)),
        "loss": trial.loss, "pg_loss": trial.stats.get("pg_loss"), "grad_norm": trial.grad_norm,
        "module_stats": trial.stats,
        "clip_mean": {s: sum(u[f"clip_{s}"] for u in ups) / len(ups) for s in ("low", "high", "dual")},
        "updates": ups, "kl_after": trial.kl_after, "probe_after": trial.probe_after,
        "probe_delta": None if probe_before is None else trial.probe_after - probe_before,
        "weights": weight_profile(trial.token_weights, trial.advantages, start.batch),
    }


def heat_entry(cfg: LabConfig, start: LabStart, trials: dict[str, Trial]) -> dict[str, Any]:
    b, tok = start.batch, start.tokenizer
    rows = heat_rows(b, cfg.heat_rows)
    lengths = [int(b.response_mask[r].sum()) for r in rows]
    return {"rows": rows, "lengths": lengths, "rewards": [float(b.rewards[r]) for r in rows],
            "tokens": [[tok.decode([t]) for t in b.response_ids[r, :n].tolist()] for r, n in zip(rows, lengths)],
            "scale": {n: float((t.token_weights.abs() * b.response_mask).max()) for n, t in trials.items()},
            "weights": {n: [t.token_weights[r, :k].tolist() for r, k in zip(rows, lengths)] for n, t in trials.items()}}


def replay_entry(start: LabStart) -> dict[str, Any] | None:
    """The recorded step trained again by the run's own stage: its loss against the one the run logged."""
    if start.recorded is None or start.run is None:
        return None
    stats = replay_step(start.run, start.recorded)
    logged = start.recorded.state.get("loss")
    return {"run_loss": logged, "replayed_loss": stats.get("loss"), "equal": logged == stats.get("loss"),
            "run_grad_norm": start.recorded.state.get("grad_norm"), "replayed_grad_norm": stats.get("grad_norm")}


def print_table(report: dict[str, Any]) -> None:
    names = list(report["losses"])
    first = names[0]
    cos = dict(zip(report["cosine"]["losses"], report["cosine"]["matrix"][0]))
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    print(f"{'loss':<8} {'value':>10} {'|grad|':>9} {'cos ' + first:>10} {'clip lo/hi/dual':>17} "
          f"{'long/short':>10} {'per A':>6} {'KL after':>9} {'probe':>7}")
    for n in names:
        e = report["losses"][n]
        c, w = e["clip_mean"], e["weights"]
        print(f"{n:<8} {e['loss']:>10.4g} {e['grad_norm']:>9.3g} {fmt(cos[n], '.3f'):>10} "
              f"{c['low']:>5.3f}/{c['high']:.3f}/{c['dual']:.3f} {fmt(w['long_over_short'], '.2f'):>10} "
              f"{fmt(w['per_advantage_long_over_short'], '.2f'):>6} {e['kl_after']:>9.2e} "
              f"{fmt(e['probe_after'], '.3f'):>7}")
    if report["probe_before"] is not None:
        print(f"probe accuracy before the updates: {report['probe_before']:.3f}")


def run_lab(cfg: LabConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = check_out_dir(cfg)
    start = lab_start(cfg)
    print(f"[lab] batch: {len(start.batch)} responses, {start.origin}", flush=True)
    probe = make_probe(cfg, start)
    probe_before = probe(start.policy) if probe is not None else None
    ref_log_sm = batch_log_softmax(start.reference, start.batch, cfg.optim.micro_batch_size)
    trials: dict[str, Trial] = {}
    for name in cfg.losses:
        torch.manual_seed(derive_seed(cfg.seed, "lab", name))
        stage = lab_stage(name, cfg, start)
        trials[name] = run_trial(name, stage, lab_learner(stage, cfg, start), start.batch, ref_log_sm, probe)
        print(f"[lab] {name}: loss {trials[name].loss:.4g}, |grad| {trials[name].grad_norm:.3g} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    report = {
        "origin": start.origin, "batch": batch_summary(start),
        "settings": {"updates": cfg.updates, "lr": cfg.optim.lr, "micro_batch_size": cfg.optim.micro_batch_size,
                     "probe_size": cfg.probe_size, "seed": cfg.seed, "threads": torch.get_num_threads()},
        "probe_before": probe_before,
        "losses": {n: loss_entry(cfg, start, t, probe_before) for n, t in trials.items()},
        "cosine": {"losses": list(trials), "matrix": cosine_matrix({n: t.grad for n, t in trials.items()})},
        "heat": heat_entry(cfg, start, trials),
        "replay": replay_entry(start),
    }
    mismatch = mismatch_report(start.policy, start.batch, cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loss_lab.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (out / "mismatch.json").write_text(json.dumps(mismatch, indent=1, allow_nan=False))
    loss_figure(report, out / "loss_lab.png")
    mismatch_figure(mismatch, out / "mismatch.png")
    print_table(report)
    if report["replay"] is not None:
        r = report["replay"]
        print(f"replay of the recorded step: run loss {r['run_loss']!r}, replayed {r['replayed_loss']!r}")
    print(f"[lab] wrote {', '.join(str(out / n) for n in REPORTS)} in {time.perf_counter() - t0:.0f}s")
    return report


def cli_main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_config(LabConfig, argv, description="Every policy loss on one frozen batch, side by side.")
    return run_or_exit(lambda: run_lab(cfg))
