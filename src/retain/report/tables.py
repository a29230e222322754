"""Text tables of run results: one run's matrices, and many runs side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

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


def collect_runs(paths: list[Path]) -> list[tuple[Path, dict, dict]]:
    """Find run folders (holding metrics.json) in ``paths``: (folder, config, metrics)."""
    found = []
    for path in paths:
        candidates = [path] if (path / "metrics.json").is_file() else sorted(path.glob("*/"))
        for run in candidates:
            mfile, cfile = run / "metrics.json", run / "config.yaml"
            if not mfile.is_file():
                continue
            try:
                metrics = json.loads(mfile.read_text())
                config = yaml.safe_load(cfile.read_text()) if cfile.is_file() else {}
            except (OSError, ValueError, yaml.YAMLError):
                continue
            found.append((run, config or {}, metrics))
    return found


def format_runs_table(runs: list[tuple[Path, dict, dict]]) -> str:
    """One line per run: benchmark, method, seed, tasks done, ACC/BWT/FWT/forgetting."""
    head = (
        f"{'run':<40} {'benchmark':<16} {'method':<10} {'seed':>4} {'done':>5} "
        + " ".join(f"{'TAw ' + s:>10}" for s in ("acc", "bwt"))
        + " "
        + " ".join(f"{'TAg ' + s:>10}" for s in ("acc", "bwt"))
    )
    lines = [head]
    for run, cfg, m in runs:
        aw, ag = m["task_aware"], m["task_agnostic"]
        done = f"{len(aw['rows'])}/{aw['n_tasks']}"
        vals = [
            aw["summary"]["acc"],
            aw["summary"]["bwt"],
            ag["summary"]["acc"],
            ag["summary"]["bwt"],
        ]
        lines.append(
            f"{run.name[:40]:<40} {cfg.get('benchmark', '?')!s:<16} "
            f"{cfg.get('method', '?')!s:<10} {cfg.get('seed', '?')!s:>4} {done:>5} "
            + " ".join(f"{_pct(v):>10}" for v in vals)
        )
    return "\n".join(lines)
