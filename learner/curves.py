"""curves.png from a metrics.jsonl, laid out by a small declared spec so a person reads it at a glance.

    layout = Layout((Group("reward / accuracy", (Panel("accuracy", ("accuracy", "eval_accuracy")),
                                                  Panel("by difficulty", ("eval_accuracy_d*",), family="eval_accuracy_"))),
                     Group("time", (Panel("seconds per step", ("step_seconds",)),))))
    drawn = plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", layout, title="grpo on math")

Each group is a titled run of panels; groups that fit share a row, a group wider than `max_cols` panels
wraps onto rows of its own. A per-step stat is a smoothed line (debiased EMA) over its faint raw points; an evaluation series (a key starting with one of
the layout's `eval_prefixes`, logged every K steps) is a plain line through its points. A stat that never
changes over the run gets no line (and a panel left with no line is not drawn); a footnote names each
one with its value, so a flat zero says so in words instead of taking a panel.
"""
from __future__ import annotations

import math
import os
import re
import statistics
import textwrap
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterable

from .metrics import read_metrics

__all__ = ["Panel", "Group", "Layout", "DrawnPanel", "Curves", "plot_curves"]

PANEL_W_IN, PANEL_H_IN, TITLE_IN, NOTE_LINE_IN, DPI = 4.0, 3.0, 0.4, 0.22, 100
# the axes inside a panel's cell: room on the left for tick labels, above for the group's and the
# panel's titles, below for the step axis (inches; fixed, so the figure is laid out without a solver)
AXES_INSET, AXES_W_IN, AXES_H_IN = (0.62, 0.55), 3.23, 2.05
# legend text across one panel (7 pt characters, handles counted as 6) and the share of the axes'
# height one legend row and its frame take
LEGEND_CHARS, LEGEND_ROW, LEGEND_PAD = 56, 0.065, 0.05


@dataclass(frozen=True)
class Panel:
    """One axes: every logged key matching one of `keys` (exact names, or fnmatch globs such as
    "eval_accuracy_d*"), in the order of `keys`, natural order within a glob ("d2" before "d10").
    `family`: a prefix the keys share; the legend shows only the rest ("d1", "d2", ...) and the
    lines are shaded in order, for one measure split by a level (difficulty)."""
    title: str
    keys: tuple[str, ...]
    family: str = ""


@dataclass(frozen=True)
class Group:
    """A topic: panels side by side under one title."""
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Layout:
    """The whole figure. A key goes to the first panel that names it; keys named by no panel are not drawn."""
    groups: tuple[Group, ...]
    eval_prefixes: tuple[str, ...] = ("eval_",)
    max_cols: int = 4

    @classmethod
    def of_keys(cls, keys: Iterable[str], cols: int = 3) -> "Layout":
        """One panel per key, `cols` to a row, rows untitled (a supervised run's loss, lr, grad_norm)."""
        panels = tuple(Panel(k, (k,)) for k in keys)
        return cls((Group("", panels),), max_cols=cols)


@dataclass(frozen=True)
class DrawnPanel:
    group: str
    title: str
    points: dict[str, int]      # key -> how many points its line has, in legend order
    evals: tuple[str, ...]      # those of them drawn as evaluation series (line through points, no smoothing)


@dataclass(frozen=True)
class Curves:
    """What plot_curves drew: the PNG, its panels, and each stat it left out with the reason."""
    png: Path
    size: tuple[int, int]       # (width, height) in pixels
    panels: tuple[DrawnPanel, ...]
    omitted: dict[str, str] = field(default_factory=dict)


@dataclass
class _Series:
    key: str
    xs: list[float]
    ys: list[float]
    is_eval: bool


def _natural(key: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style debiased exponential moving average."""
    out, acc = [], 0.0
    for i, v in enumerate(values, start=1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** i))
    return out


def _auto_smoothing(ys: list[float]) -> float:
    """The EMA weight for a per-step series: a window of about a fifteenth of the run for a noisy one
    (120 steps of RL reward -> 0.875), shorter for a steady one, where a long window would only show
    lag (a pretraining loss falling fast, an lr schedule: no smoothing at all)."""
    span = max(ys) - min(ys)
    if len(ys) < 3 or span == 0:
        return 0.0
    jitter = statistics.median(abs(b - a) for a, b in zip(ys, ys[1:])) / span
    window = len(ys) / 15 * min(1.0, jitter / 0.1)
    return min(0.99, 1 - 1 / window) if window > 1 else 0.0


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _place(layout: Layout, logged: list[str]) -> list[tuple[Group, Panel, list[str]]]:
    """Each panel with the logged keys it claims (first panel wins)."""
    taken: set[str] = set()
    placed = []
    for group in layout.groups:
        for panel in group.panels:
            keys = []
            for pattern in panel.keys:
                hits = sorted((k for k in logged if k not in taken and fnmatchcase(k, pattern)), key=_natural)
                keys += hits
                taken.update(hits)
            placed.append((group, panel, keys))
    return placed


def _series(records: list[dict], key: str, is_eval: bool) -> _Series:
    pts = [(r["step"], float(r[key])) for r in records if "step" in r and _is_number(r.get(key))]
    return _Series(key, [p[0] for p in pts], [p[1] for p in pts], is_eval)


def _why_omitted(s: _Series) -> str:
    if not s.ys:
        return "no numeric value"
    lo, hi = min(s.ys), max(s.ys)
    if len(s.ys) > 1 and math.isclose(lo, hi, rel_tol=1e-6):
        return f"constant {_fmt(s.ys[0])}"
    return ""


def _pack(rows: list, cols: int) -> list[list]:
    """Groups side by side on one line of `cols` panels while they fit; a group wider than that
    wraps onto rows of its own."""
    lines: list[list] = []
    used = cols
    for group, panels in rows:
        width = min(len(panels), cols)
        if used + width > cols:
            lines.append([])
            used = 0
        lines[-1].append((group, panels))
        used = cols if len(panels) > cols else used + width
    return lines


def _note(omitted: dict[str, str], width_in: float) -> list[str]:
    """'not drawn — constant over the run: clip_frac=0, ratio_mean=1; no numeric value: reward', wrapped
    to the figure's width."""
    if not omitted:
        return []
    constant = [f"{k}={why.split(' ', 1)[1]}" for k, why in omitted.items() if why.startswith("constant")]
    empty = [k for k, why in omitted.items() if not why.startswith("constant")]
    parts = ([f"constant over the run: {', '.join(constant)}"] if constant else []) + \
            ([f"no numeric value: {', '.join(empty)}"] if empty else [])
    return textwrap.wrap("not drawn — " + "; ".join(parts), width=int(width_in * 15))


def _draw_series(ax, panel: Panel, series: list[_Series], smoothing: float | None) -> list[float]:
    """The lines of one panel; returns the values the view must show (a per-step stat's raw points
    between its 2nd and 98th percentile, as TensorBoard ignores outliers, its smoothed line, every
    evaluation point)."""
    import numpy as np
    from matplotlib import colormaps

    if panel.family:
        shades = colormaps["viridis"]
        colors = [shades(0.1 + 0.75 * i / max(1, len(series) - 1)) for i in range(len(series))]
    else:
        colors = [f"C{i % 10}" for i in range(len(series))]
    shown: list[float] = []
    for s, color in zip(series, colors):
        name = s.key[len(panel.family):] if panel.family and s.key.startswith(panel.family) else s.key
        if s.is_eval:
            span = _fmt(s.ys[0]) if len(s.ys) == 1 else f"{_fmt(s.ys[0])} → {_fmt(s.ys[-1])}"
            ax.plot(s.xs, s.ys, color=color, linewidth=1.5, marker="o", markersize=4, label=f"{name}  {span}")
            shown += s.ys
            continue
        weight = _auto_smoothing(s.ys) if smoothing is None else smoothing
        smooth = _ema(s.ys, weight) if weight > 0 else s.ys
        ax.scatter(s.xs, s.ys, s=5, color=color, alpha=0.25, linewidths=0)
        ax.plot(s.xs, smooth, color=color, linewidth=1.8, label=f"{name}  {_fmt(smooth[-1])}")
        shown += list(np.quantile(s.ys, [0.02, 0.98])) + smooth
    return shown


def _frame(ax, title: str, shown: list[float], x_lim: tuple[float, float]) -> None:
    """Titles, limits and the legend, which sits in headroom added above the data so it never hides a
    line: as many columns as its labels fit across the panel, a band tall enough for its rows."""
    from matplotlib.ticker import MaxNLocator

    lo, hi = min(shown), max(shown)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    ax.set_ylim(lo, hi)
    ax.set_yticks([t for t in ax.get_yticks() if lo <= t <= hi])   # no ticks in the legend's band
    labels = ax.get_legend_handles_labels()[1]
    ncols = max(1, min(len(labels), LEGEND_CHARS // (max(map(len, labels)) + 6)))
    band = LEGEND_PAD + LEGEND_ROW * math.ceil(len(labels) / ncols)
    ax.set_ylim(lo, lo + (hi - lo) / (1 - band))
    ax.set_xlim(*x_lim)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))   # whole steps, round ones
    ax.ticklabel_format(axis="y", useOffset=False)   # an offset ("+6.09") would sit on the title
    ax.legend(fontsize=7, loc="upper left", ncols=ncols, framealpha=0.8, columnspacing=1.0, handlelength=1.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=7, labelpad=1)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _collect(records: list[dict], layout: Layout) -> tuple[list, dict[str, str]]:
    """[(group, [(panel, [series drawn])])] for the groups with something to draw, and the omitted keys."""
    logged = list(dict.fromkeys(k for r in records for k in r if k not in ("step", "time")))
    omitted: dict[str, str] = {}
    rows: list[tuple[Group, list[tuple[Panel, list[_Series]]]]] = []
    for group, panel, keys in _place(layout, logged):
        kept = []
        for key in keys:
            s = _series(records, key, key.startswith(layout.eval_prefixes))
            why = _why_omitted(s)
            if why:
                omitted[key] = why
            else:
                kept.append(s)
        if kept:
            if not rows or rows[-1][0] is not group:
                rows.append((group, []))
            rows[-1][1].append((panel, kept))
    return rows, omitted


def _grid(rows: list, cols: int) -> tuple[list, int]:
    """Per group: its first row and column and each of its panels' (row, column); the number of rows."""
    cells, top = [], 0
    for line in _pack(rows, cols):
        col = 0
        for group, panels in line:
            width = min(len(panels), cols)
            cells.append((group, top, col, [(panel, series, top + i // width, col + i % width)
                                            for i, (panel, series) in enumerate(panels)]))
            col += width
        top += max(math.ceil(len(panels) / cols) for _, panels in line)
    return cells, top


def plot_curves(path_jsonl: str | Path, out_png: str | Path, layout: Layout, title: str = "",
                smoothing: float | None = None) -> Curves:
    """Draw `layout` from the records of `path_jsonl` into `out_png`; returns what was drawn.

    `smoothing`: the EMA weight in [0, 1) of the per-step lines; None picks one per series.
    Size, at DPI: (columns used) x PANEL_W_IN wide; rows x PANEL_H_IN tall, plus TITLE_IN with a title
    and NOTE_LINE_IN per footnote line (two rows of up to two panels, a title, a one-line note: 800x662).
    Matplotlib's Agg canvas directly (no display, no pyplot global state); the PNG is written beside
    and renamed, so a viewer reloading it during a run never sees half a file.
    """
    from matplotlib.figure import Figure

    if smoothing is not None and not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    rows, omitted = _collect(read_metrics(path_jsonl), layout)
    cols = max([min(len(panels), layout.max_cols) for _, panels in rows] or [1])
    cells, n_rows = _grid(rows, cols)
    note = _note(omitted, cols * PANEL_W_IN)
    head = TITLE_IN if title else 0.0
    width_in, height_in = cols * PANEL_W_IN, head + max(n_rows, 1) * PANEL_H_IN + len(note) * NOTE_LINE_IN
    size = (round(width_in * DPI), round(height_in * DPI))
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    if title:
        fig.text(0.5, 1 - head / 2 / height_in, title, ha="center", va="center", fontsize=13)
    if note:
        fig.text(0.06 / width_in, len(note) * NOTE_LINE_IN / 2 / height_in, "\n".join(note), ha="left",
                 va="center", fontsize=8, color="0.3")
    if not rows:
        fig.text(0.5, 0.5, "nothing to draw", ha="center", va="center")
    xs = [x for _, panels in rows for _, ss in panels for s in ss for x in s.xs] or [0]
    margin = (max(xs) - min(xs)) * 0.02 or 1   # room for the markers at the first and last step
    x_lim = (min(xs) - margin, max(xs) + margin)
    drawn: list[DrawnPanel] = []
    for group, row, col, panels in cells:
        if group.title:
            fig.text((col * PANEL_W_IN + 0.08) / width_in, 1 - (head + row * PANEL_H_IN + 0.05) / height_in,
                     group.title, ha="left", va="top", fontsize=11, fontweight="bold")
        for panel, series, r, c in panels:
            left, top = c * PANEL_W_IN + AXES_INSET[0], head + r * PANEL_H_IN + AXES_INSET[1]
            box = (left / width_in, 1 - (top + AXES_H_IN) / height_in, AXES_W_IN / width_in, AXES_H_IN / height_in)
            ax = fig.add_axes(box)
            _frame(ax, panel.title, _draw_series(ax, panel, series, smoothing), x_lim)
            drawn.append(DrawnPanel(group.title, panel.title, {s.key: len(s.xs) for s in series},
                                    tuple(s.key for s in series if s.is_eval)))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp")
    fig.savefig(tmp, dpi=DPI, format="png")
    os.replace(tmp, out_png)
    return Curves(out_png, size, tuple(drawn), omitted)
