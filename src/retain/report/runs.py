"""Find and load run folders for reports, skipping the ones that cannot be trusted.

A folder is a *run folder* when it holds any of the files :func:`retain.fit` and
``retain run`` write (``config.yaml``, ``metrics.json``, ``checkpoint.pt``, ``events.jsonl``;
the same files, in the same format, whichever wrote them). Folders that hold none
are searched for run folders below them (sweeps and ``retain compare`` nest them one level
down). A run folder enters a report only when it is finished and readable: its
``config.yaml`` names a benchmark and a method, and its ``metrics.json`` holds both accuracy
matrices with a row for every task. A run whose training diverged (``diverged.json``,
:class:`~retain.engine.Diverged`) enters too, marked ``diverged``, with no metrics: reports show
it as diverged and never rank it. Every other run folder (interrupted, killed before its first
task, corrupt or half-copied files) is returned in ``skipped`` with the reason, so the caller
can warn about it by name; nothing raises.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retain import config_yaml
from retain.engine import runio
from retain.engine.trainer import DIVERGED
from retain.metrics import AccuracyMatrix

#: files whose presence makes a folder a run folder
RUN_FILES = (runio.CONFIG, runio.METRICS, runio.CHECKPOINT, runio.EVENTS, DIVERGED)
#: how deep below a given folder run folders are looked for
MAX_DEPTH = 4


@dataclass
class RunRecord:
    """One finished run, read from its folder."""

    path: Path
    config: dict[str, Any]
    task_aware: AccuracyMatrix
    task_agnostic: AccuracyMatrix
    method_metrics: dict[str, Any] = field(default_factory=dict)
    #: wall seconds per task from ``timings.json`` (None when the file is absent)
    seconds_per_task: list[float] | None = None
    #: the content of ``diverged.json`` when training diverged (then the matrices are empty)
    diverged: dict[str, Any] | None = None

    @property
    def benchmark(self) -> str:
        return str(self.config["benchmark"])

    @property
    def method(self) -> str:
        return str(self.config["method"])

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def seconds(self) -> float | None:
        """Total training wall time (sum over tasks), None when unknown."""
        return None if self.seconds_per_task is None else float(sum(self.seconds_per_task))


@dataclass
class Skipped:
    """A run folder left out of a report, and why (one line)."""

    path: Path
    reason: str

    def message(self) -> str:
        return f"skipping {self.path}: {self.reason}"


@dataclass
class Collection:
    """The finished runs found, and the run folders skipped."""

    runs: list[RunRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def find_run_folders(path: Path, depth: int = MAX_DEPTH) -> list[Path]:
    """``path`` itself if it is a run folder, else the run folders below it (sorted; hidden
    folders are not searched)."""
    if is_run_folder(path):
        return [path]
    if depth == 0 or not path.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += find_run_folders(child, depth - 1)
    return found


class _Unusable(Exception):
    """Raised by the readers below; the message is the reason shown to the user."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise _Unusable(f"cannot read {path.name} ({e.__class__.__name__})") from None
    except ValueError:
        raise _Unusable(f"{path.name} is not valid JSON (corrupt or half-written)") from None


def _read_config(run: Path) -> dict[str, Any]:
    path = run / runio.CONFIG
    if not path.is_file():
        raise _Unusable(f"no {runio.CONFIG}")
    try:
        config = config_yaml.load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise _Unusable(f"{runio.CONFIG} is not valid YAML (corrupt or half-written)") from None
    if not isinstance(config, dict):
        raise _Unusable(f"{runio.CONFIG} does not hold a mapping")
    for key in ("benchmark", "method"):
        if not isinstance(config.get(key), str):
            raise _Unusable(f"{runio.CONFIG} names no {key}")
    return config


def _matrix(metrics: dict[str, Any], key: str) -> AccuracyMatrix:
    try:
        matrix = AccuracyMatrix.from_dict(metrics[key])
    except (KeyError, TypeError, ValueError):
        raise _Unusable(f"{runio.METRICS} holds no valid {key} matrix") from None
    values = [v for row in matrix.rows for v in row]
    if any(not isinstance(v, float) or not (math.isnan(v) or 0.0 <= v <= 1.0) for v in values):
        raise _Unusable(f"{runio.METRICS}: {key} accuracies outside [0, 1]")
    return matrix


def _seconds(run: Path) -> list[float] | None:
    """Seconds per task from ``timings.json``; None (time n/a) when it is missing or
    unreadable: timings never keep a finished run out of a report."""
    path = run / runio.TIMINGS
    if not path.is_file():
        return None
    try:
        timings = _read_json(path)
    except _Unusable:
        return None
    secs = timings.get("seconds_per_task") if isinstance(timings, dict) else None
    if not isinstance(secs, list) or not all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in secs
    ):
        return None
    return [float(s) for s in secs]


def load_run(run: Path) -> RunRecord:
    """Read one finished run folder; raises ``ValueError`` with a one-line reason when it is
    unfinished or unreadable."""
    try:
        config = _read_config(run)
        if (run / DIVERGED).is_file():
            record = _read_json(run / DIVERGED)
            if not isinstance(record, dict):
                raise _Unusable(f"{DIVERGED} does not hold a mapping")
            empty = AccuracyMatrix(0)
            return RunRecord(run, config, empty, AccuracyMatrix(0), diverged=record)
        mfile = run / runio.METRICS
        if not mfile.is_file():
            raise _Unusable(f"unfinished: no task done yet (no {runio.METRICS})")
        metrics = _read_json(mfile)
        if not isinstance(metrics, dict):
            raise _Unusable(f"{runio.METRICS} does not hold a mapping")
        aware = _matrix(metrics, "task_aware")
        agnostic = _matrix(metrics, "task_agnostic")
        if aware.trained < aware.n_tasks:
            raise _Unusable(
                f"unfinished: {aware.trained} of {aware.n_tasks} tasks done "
                f"(continue it with {_resume_hint(run, config)})"
            )
        if agnostic.trained != aware.trained or agnostic.n_tasks != aware.n_tasks:
            raise _Unusable(f"{runio.METRICS}: the two matrices disagree in size")
        method = metrics.get("method", {})
        return RunRecord(
            path=run,
            config=config,
            task_aware=aware,
            task_agnostic=agnostic,
            method_metrics=method if isinstance(method, dict) else {},
            seconds_per_task=_seconds(run),
        )
    except _Unusable as e:
        raise ValueError(str(e)) from None


def _resume_hint(run: Path, config: dict[str, Any]) -> str:
    """How to continue an unfinished run: ``retain run --resume``, or from Python for a run
    of objects of one's own (``own_objects``, written by :func:`retain.fit`)."""
    if config.get(runio.OWN_OBJECTS):
        return f"retain.fit(..., run_dir={str(run)!r}, resume=True)"
    return f"`retain run --resume {run}`"


def collect(paths: list[Path]) -> Collection:
    """Every finished run below ``paths`` (each folder once, in the order found); the run
    folders that could not be used go to ``skipped`` with their reason."""
    out = Collection()
    seen: set[Path] = set()
    for path in paths:
        for run in find_run_folders(Path(path)):
            key = run.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                out.runs.append(load_run(run))
            except ValueError as e:
                out.skipped.append(Skipped(run, str(e)))
    return out
