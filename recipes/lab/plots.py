"""The lab's two pictures, drawn from the same dicts its JSON files hold (matplotlib's Agg canvas, no
pyplot state): the loss report (gradient cosines, per-token weights of a few responses, clip shares, probe
accuracy after k updates) and the mismatch report (gap and TIS weights by source)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format="png")
    os.replace(tmp, path)
    return path


def _cosines(ax: Any, report: dict) -> None:
    names = report["cosine"]["losses"]
    m = np.array([[np.nan if v is None else v for v in row] for row in report["cosine"]["matrix"]], dtype=float)
    im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, "-" if np.isnan(m[i, j]) else f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("cosine of the first gradients (same weights, same batch)", fontsize=10)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def _strips(ax: Any, report: dict) -> None:
    heat = report["heat"]
    names = list(heat["weights"])
    R = max(heat["lengths"], default=1)
    lines, labels = [], []
    for k, row in enumerate(heat["rows"]):
        lines.append(np.full(R, np.nan))
        labels.append(f"row {row}: {heat['lengths'][k]} tokens, reward {heat['rewards'][k]:.2f}")
        for name in names:
            w = -np.asarray(heat["weights"][name][k], dtype=float)        # + raises the token's logprob
            scale = max(max(abs(x) for x in ws) if ws else 0.0 for ws in heat["weights"][name])
            line = np.full(R, np.nan)
            line[:len(w)] = w / scale if scale > 0 else 0.0
            lines.append(line)
            labels.append(name)
    im = ax.imshow(np.array(lines), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel("response token", fontsize=8)
    ax.set_title("-d loss / d logp per token (+: raises the token; each loss scaled to its largest here)",
                 fontsize=10)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def _clips(ax: Any, report: dict) -> None:
    names = list(report["losses"])
    x = np.arange(len(names))
    for i, side in enumerate(("low", "high", "dual")):
        vals = [report["losses"][n]["clip_mean"][side] for n in names]
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=side)
    ax.set_xticks(x, names, rotation=45, fontsize=8)
    ax.set_ylabel("share of tokens", fontsize=8)
    ax.set_title(f"clipped, mean over the {report['settings']['updates']} updates", fontsize=10)
    ax.legend(fontsize=7)


def _probe(ax: Any, report: dict) -> None:
    names = list(report["losses"])
    k = report["settings"]["updates"]
    before = report["probe_before"]
    if before is None:
        vals = [report["losses"][n]["kl_after"] for n in names]
        ax.bar(names, vals, color="C2")
        ax.set_title(f"KL to the reference after {k} updates (no probe)", fontsize=10)
    else:
        vals = [report["losses"][n]["probe_after"] for n in names]
        ax.bar(names, vals, color="C2")
        ax.axhline(before, color="k", linestyle="--", linewidth=1, label=f"before: {before:.3f}")
        lo = min(vals + [before])
        hi = max(vals + [before])
        pad = max(0.02, (hi - lo) * 0.5)
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
        for i, n in enumerate(names):
            ax.text(i, vals[i], f"KL {report['losses'][n]['kl_after']:.1e}", ha="center", va="bottom", fontsize=6)
        ax.set_title(f"probe accuracy after {k} updates ({report['settings']['probe_size']} held-out, greedy)",
                     fontsize=10)
        ax.legend(fontsize=7)
    ax.tick_params(axis="x", rotation=45, labelsize=8)


def loss_figure(report: dict, path: str | Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 11), dpi=100)
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 1.5])
    _cosines(fig.add_subplot(grid[0, 0]), report)
    _strips(fig.add_subplot(grid[0, 1]), report)
    _clips(fig.add_subplot(grid[1, 0]), report)
    _probe(fig.add_subplot(grid[1, 1]), report)
    o = report["origin"]
    fig.suptitle(f"loss lab: {report['batch']['rows']} responses ({o['kind']}: "
                 f"{o.get('record') or o.get('init')}), {report['settings']['updates']} updates at lr "
                 f"{report['settings']['lr']:g}")
    fig.tight_layout()
    return _save(fig, Path(path))


def mismatch_figure(mismatch: dict, path: str | Path) -> Path:
    from matplotlib.figure import Figure

    names = list(mismatch["sources"])
    src = mismatch["sources"]
    fig = Figure(figsize=(13, 4.5), dpi=100)
    ax = fig.add_subplot(1, 2, 1)
    y = np.arange(len(names))
    floor = 1e-9   # a gap of exactly 0 on a log axis
    ax.barh(y - 0.2, [max(src[n]["mismatch_abs_mean"], floor) for n in names], 0.4, label="mean |gap|")
    ax.barh(y + 0.2, [max(src[n]["mismatch_abs_max"], floor) for n in names], 0.4, label="max |gap|")
    ax.set_xscale("log")
    for j, n in enumerate(names):
        if src[n]["mismatch_abs_max"] == 0:
            ax.text(floor, j, " 0: identical", fontsize=7, va="center")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("|rollout logprob - learner logprob| (nats)", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title("logprob gap by source", fontsize=10)
    ax = fig.add_subplot(1, 2, 2)
    for i, level in enumerate(("token", "sequence")):
        ax.barh(y + (i - 0.5) * 0.4, [src[n][f"tis_{level}"]["weight_mean"] for n in names], 0.4,
                label=f"{level} level")
        for j, n in enumerate(names):
            t = src[n][f"tis_{level}"]["truncated_frac"]
            if t > 0:
                ax.text(src[n][f"tis_{level}"]["weight_mean"], j + (i - 0.5) * 0.4, f" {t:.1%} at cap", fontsize=6,
                        va="center")
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_xlim(0, max(1.35, max(src[n][f"tis_{lv}"]["weight_mean"] for n in names for lv in ("token", "sequence"))))
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel(f"mean TIS weight min(exp(learner - rollout), {mismatch['tis_cap']:g})", fontsize=8)
    ax.legend(fontsize=7, loc="center right")
    ax.set_title("truncated importance weights each source would get", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))

