"""One run's accuracy matrices and summaries as text (what `retain run` prints)."""

from __future__ import annotations

import math

from retain.metrics import SUMMARIES, AccuracyMatrix

_LABELS = {"task_aware": "task-aware", "task_agnostic": "task-agnostic"}


def _pct(v: float | None) -> str:
    return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"


def format_result(metrics: dict) -> str:
    """Both accuracy matrices of one run and their summaries (percent)."""
    parts = []
    for key, label in _LABELS.items():
        m = metrics[key]
        matrix = AccuracyMatrix.from_dict(m)
        if all(math.isnan(v) for row in matrix.rows for v in row):
            parts.append(f"{label}: not available for this method")
            continue
        parts.append(matrix.format(f"{label} accuracy (%), row = after training task, col = task"))
    lines = ["", "summary (%)      " + " ".join(f"{s:>10}" for s in SUMMARIES)]
    for key, label in _LABELS.items():
        s = metrics[key]["summary"]
        lines.append(f"{label:<16} " + " ".join(f"{_pct(s[k]):>10}" for k in SUMMARIES))
    return "\n\n".join(parts) + "\n" + "\n".join(lines)
