"""Dynamos' modularity analysis (Varma et al., VISAPP 2023, Section 6, Figs. 3-4) as files.

``write_dynamos_analysis(run_dir, method_metrics)`` turns what ``Dynamos.extra_metrics()``
stores in ``metrics.json`` into

* ``dynamos_analysis.npz``: ``firing_by_class`` ``[classes, filters]`` (training actions of the
  last task, stream and replayed samples), ``classes``, ``firing_by_task`` ``[tasks, filters]``
  (inference actions on each task's test set), ``tasks``, ``class_jsd`` (Jensen-Shannon
  divergence between the classes' firing rates in the last agent), ``n_filters``;
* ``firing_by_class.png`` and ``firing_by_task.png`` (filters along x, one row per class or
  task, agents separated by lines: the paper's Fig. 3), and ``class_jsd.png`` (Fig. 4).

Methods without agents report none of these keys, and nothing is written.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from retain.engine import runio

NPZ = "dynamos_analysis.npz"


def _save(fig, path: Path) -> None:
    """PNG bytes written atomically (an interrupted run never leaves half a file)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    runio.atomic_write_bytes(path, buf.getvalue())


def _rows(table: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(table, key=int)
    return np.array([int(k) for k in keys]), np.array([table[k] for k in keys], dtype=np.float64)


def _heatmap(path: Path, rates: np.ndarray, labels: np.ndarray, what: str, n_filters) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, rates.shape[1] / 12), 0.35 * len(labels) + 1.5))
    im = ax.imshow(rates, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_yticks(range(len(labels)), [str(v) for v in labels])
    ax.set_ylabel(what)
    ax.set_xlabel("filter (agents in order)")
    for edge in np.cumsum(n_filters)[:-1]:
        ax.axvline(edge - 0.5, color="white", linewidth=1)
    fig.colorbar(im, ax=ax, label="firing rate (fraction kept)")
    _save(fig, path)


def _jsd_plot(path: Path, jsd: np.ndarray, classes: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(classes), 0.5 * len(classes) + 0.8))
    im = ax.imshow(jsd, cmap="magma")
    ticks = [str(c) for c in classes]
    ax.set_xticks(range(len(classes)), ticks)
    ax.set_yticks(range(len(classes)), ticks)
    ax.set_title("JS divergence of class firing rates (last agent)")
    fig.colorbar(im, ax=ax)
    _save(fig, path)


def write_dynamos_analysis(run_dir: str | Path, method_metrics: dict[str, Any]) -> list[Path]:
    """Write the arrays and plots listed in the module docstring; return the paths written
    (none when ``method_metrics`` has no firing rates)."""
    if "firing_rate_by_class" not in method_metrics and "firing_rate_by_task" not in method_metrics:
        return []
    run_dir = Path(run_dir)
    n_filters = np.array(method_metrics.get("n_filters", []), dtype=np.int64)
    arrays: dict[str, np.ndarray] = {"n_filters": n_filters}
    written = []
    if "firing_rate_by_class" in method_metrics:
        classes, rates = _rows(method_metrics["firing_rate_by_class"])
        arrays.update(classes=classes, firing_by_class=rates)
        _heatmap(run_dir / "firing_by_class.png", rates, classes, "class", n_filters)
        written.append(run_dir / "firing_by_class.png")
    if "firing_rate_by_task" in method_metrics:
        tasks, rates = _rows(method_metrics["firing_rate_by_task"])
        arrays.update(tasks=tasks, firing_by_task=rates)
        _heatmap(run_dir / "firing_by_task.png", rates, tasks, "task", n_filters)
        written.append(run_dir / "firing_by_task.png")
    jsd = method_metrics.get("class_jsd_last_agent")
    if jsd:
        matrix = np.array(jsd["jsd"], dtype=np.float64)
        arrays["class_jsd"] = matrix
        arrays["jsd_classes"] = np.array(jsd["classes"], dtype=np.int64)
        _jsd_plot(run_dir / "class_jsd.png", matrix, arrays["jsd_classes"])
        written.append(run_dir / "class_jsd.png")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    runio.atomic_write_bytes(run_dir / NPZ, buf.getvalue())
    return [run_dir / NPZ, *written]
