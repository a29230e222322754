"""Report figures as PNG bytes (matplotlib's object API rendered by Agg: no display needed, and
pyplot's global backend and figure list are left alone for users who also plot).

* :func:`accuracy_curves`: average accuracy over the tasks seen so far after each task, one
  line per group (mean over seeds, shaded ± std), task-aware and task-agnostic panels: the
  plot of ScrollNet's Figures 4-5; accuracy from 0 to 100 % (:data:`ACC_LIMITS`), a legend
  per panel, and a note naming the groups a panel leaves out (task-aware-only methods).
* :func:`accuracy_heatmaps`: a group's accuracy matrix R[i][j] (mean over seeds).
* :func:`layer_plot`: per-layer weights in use (masked methods' ``capacity`` report) or
  fully blocked parameters (SPG's ``blocked``) after each task, when a group reports them.
"""

from __future__ import annotations

import io
import math
import statistics
import textwrap
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from retain.report.mask_report import layer_name
from retain.report.summary import SETTINGS, Group, Table

TITLES = {"task_aware": "task-aware", "task_agnostic": "task-agnostic"}
DPI = 100


def _png(fig: Figure, tight_bbox: bool = False) -> bytes:
    """Render with Agg (``Figure.savefig`` makes its own canvas)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight_bbox else None)
    return buf.getvalue()


def _subplots(n: int, width: float, height: float, layout: str = "tight"):
    fig = Figure(figsize=(width, height), layout=layout)
    return fig, fig.subplots(1, n, squeeze=False)


#: accuracy axes run from 0 to 100 % in every panel: a drop from 99 to 97 looks as small as it
#: is, and the task-aware and task-agnostic panels (and two reports) share one scale
ACC_LIMITS = (0.0, 100.0)


#: characters of legend text that fit under one panel (5.2 inches at font size 8), and of a
#: panel's note per line
PANEL_CHARS = 84
NOTE_WIDTH = 60


def legend_columns(labels: list[str]) -> int:
    """Columns of a panel's legend: up to 3, as many as the longest label lets fit under the
    panel (a legend wider than its panel would squeeze the panels)."""
    widest = max((len(label) for label in labels), default=1) + 6  # the line sample, the gap
    return max(1, min(3, PANEL_CHARS // widest))


def _not_shown(table: Table, setting: str) -> list[str]:
    """Labels of the trained groups without numbers in ``setting`` (task-aware-only methods
    in the task-agnostic panel); diverged groups are in none and noted by the table."""
    return [g.label for g in table.groups if not g.diverged and not g.has_setting(setting)]


def not_shown_note(table: Table, setting: str) -> str:
    """The note a panel carries about the groups it leaves out ("" when none)."""
    missing = _not_shown(table, setting)
    if not missing:
        return ""
    others = [TITLES[s] for s in SETTINGS if s != setting]
    return f"not shown, {' / '.join(others)} only: {', '.join(missing)}"


def accuracy_figure(table: Table) -> Figure:
    """Average accuracy after each task, one line per group, a panel per setting; each panel
    has its own legend (the groups it draws) and a note naming the groups it leaves out."""
    settings = [s for s in SETTINGS if any(g.has_setting(s) for g in table.groups)]
    ncol = legend_columns([g.label for g in table.groups])
    rows = -(-len(table.groups) // ncol)  # legend rows below each panel
    fig, axes = _subplots(
        len(settings), 5.2 * len(settings), 3.8 + 0.25 * rows, layout="constrained"
    )
    for ax, setting in zip(axes[0], settings):
        for k, group in enumerate(table.groups):
            if not group.has_setting(setting):  # (nor has a diverged group)
                continue
            curve = group.curve(setting)
            x = np.arange(1, len(curve) + 1)
            mean = np.array([math.nan if s is None else 100 * s.mean for s in curve])
            std = np.array([0.0 if s is None or s.std is None else 100 * s.std for s in curve])
            color = f"C{k % 10}"  # a group keeps its colour in every panel
            ax.plot(x, mean, marker="o", markersize=3, label=group.label, color=color)
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)
        ax.set_title(f"{table.title}: {TITLES[setting]}")
        ax.set_xlabel("tasks learned")
        ax.set_ylabel("average accuracy on tasks seen (%)")
        ax.set_xticks(range(1, max(g.n_tasks for g in table.groups) + 1))
        ax.set_ylim(*ACC_LIMITS)
        ax.grid(alpha=0.3)
        note = not_shown_note(table, setting)
        if note:
            ax.text(
                0.02,
                0.03,
                textwrap.fill(note, NOTE_WIDTH),
                transform=ax.transAxes,
                fontsize=8,
                va="bottom",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
            )
        labels = ax.get_legend_handles_labels()[1]
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            ncol=max(1, min(ncol, len(labels))),
            fontsize=8,
            frameon=False,
        )
    return fig


def accuracy_curves(table: Table) -> bytes:
    """:func:`accuracy_figure` as PNG."""
    return _png(accuracy_figure(table))


def accuracy_heatmaps(group: Group) -> bytes:
    """R[i][j] averaged over seeds (row: after training task i; column: tested on task j)."""
    settings = [s for s in SETTINGS if group.has_setting(s)]
    t = group.n_tasks
    size = min(1.0 + 0.55 * t, 8.0)
    fig, axes = _subplots(len(settings), size * len(settings) + 1, size, layout="constrained")
    for ax, setting in zip(axes[0], settings):
        matrix = 100 * np.array(group.mean_matrix(setting))
        im = ax.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
        if t <= 12:
            for i in range(t):
                for j in range(t):
                    if not math.isnan(matrix[i, j]):
                        color = "black" if matrix[i, j] > 60 else "white"
                        ax.text(
                            j,
                            i,
                            f"{matrix[i, j]:.0f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color=color,
                        )
        ticks = range(t) if t <= 20 else range(0, t, max(1, t // 10))
        ax.set_xticks(list(ticks), [str(j + 1) for j in ticks])
        ax.set_yticks(list(ticks), [str(i + 1) for i in ticks])
        ax.set_xlabel("tested on task")
        ax.set_ylabel("after training task")
        ax.set_title(f"{group.label}: {TITLES[setting]}", fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="accuracy (%)")
    return _png(fig, tight_bbox=True)


def _mean_series(series: list[list[float]]) -> list[float]:
    n = min(len(s) for s in series)
    return [statistics.fmean(s[i] for s in series) for i in range(n)]


def layer_series(group: Group) -> tuple[str, dict[str, list[float]]] | None:
    """(y-axis label, {layer: value after each task, mean over seeds}) for groups whose runs
    report weights in use per layer (``capacity``) or blocked parameters (``blocked``); layers
    named as the backbone's modules (:func:`~retain.report.mask_report.layer_name`)."""
    caps = [r.method_metrics.get("capacity") for r in group.runs]
    if all(isinstance(c, dict) for c in caps):
        reports: list[dict[str, Any]] = [c.get("weights", c) for c in caps]  # type: ignore[union-attr]
        try:
            names = [*reports[0]["layers"], "total"]
            out = {
                layer_name(name): _mean_series(
                    [
                        (rep["total"] if name == "total" else rep["layers"][name])[
                            "used_frac_after_task"
                        ]
                        for rep in reports
                    ]
                )
                for name in names
            }
        except (KeyError, TypeError, ValueError):
            out = {}
        if out and all(out.values()):
            return "weights in use (% of the layer)", out
    blocked = [r.method_metrics.get("blocked") for r in group.runs]
    if all(isinstance(b, list) and b for b in blocked):
        try:
            names = list(blocked[0][0])  # type: ignore[index]
            out = {
                layer_name(name): _mean_series([[float(step[name]) for step in b] for b in blocked])  # type: ignore[union-attr]
                for name in names
            }
        except (KeyError, TypeError, ValueError):
            return None
        return "fully blocked parameters (% of the layer)", out
    return None


def layer_plot(group: Group) -> bytes | None:
    """Per-layer capacity or blocked parameters after each task; None when not reported."""
    found = layer_series(group)
    if found is None:
        return None
    ylabel, series = found
    fig, axes = _subplots(1, 5.2, 3.6)
    ax = axes[0][0]
    for name, values in series.items():
        x = np.arange(1, len(values) + 1)
        style = {"linewidth": 2.5, "color": "black"} if name == "total" else {}
        ax.plot(x, [100 * v for v in values], marker="o", markersize=3, label=name, **style)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel(ylabel)
    ax.set_title(group.label, fontsize=9)
    ax.set_xticks(range(1, max(len(v) for v in series.values()) + 1))
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    top = max(100 * max(v) for v in series.values())
    ax.set_ylim(0, 100 if ylabel.startswith("weights") else max(1.0, 1.1 * top))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
