"""Sweeps: methods x benchmarks x seeds x hyperparameters, each trial an ordinary run folder.

A sweep file is YAML::

    out: runs/sweep-mnist            # where the trial folders go (default runs/<file name>)
    seeds: 2                         # 2 -> seeds 0 and 1; or a list [0, 5, 7]
    set: {epochs: 1, lr: 0.01}       # config keys of every trial (as `retain run --set`)
    grid: {batch_size: [32, 64]}     # every combination of these values, for every trial
    benchmarks: [split-mnist5k]      # names, or a mapping name -> {set: ..., grid: ...}
    methods:                         # names, or a mapping name -> {set: ..., grid: ...}
      finetune: {}
      ewc: {grid: {method_args.lamb: [100, 1000]}}

Instead of a ``grid``, a ``search`` section samples the values (random or TPE, through Optuna;
see :mod:`retain.search`), and a method or benchmark may add its own ``space``.

Trials are named and found again by :func:`retain.trials.trial_name`, so running the same
sweep again skips the finished trials and resumes the interrupted ones. They run one after
another in this process or as Ray tasks (:mod:`retain.executors`: an embedded local Ray by
default, a cluster when given its address; ``pip install 'retain-cl[sweep]'``). A
failed trial is recorded and reported; the others go on. At the end ``trials.json`` holds
every trial's history (what each invocation did with it), and ``report/`` the report of the
sweep's trials (:mod:`retain.report`).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retain.engine import runio
from retain.executors import Executor
from retain.experiment import ConfigError, RunConfig, load_yaml, resolve
from retain.search import (
    Param,
    SearchError,
    SearchSpec,
    StudySummary,
    open_study,
    parse_search,
    parse_space,
    run_study,
)
from retain.trials import Trial, TrialResult, folder_lock

STATUS = "trials.json"
REPORT_DIR = "report"
SEARCH_DIR = "search"
SPEC_KEYS = ("out", "seeds", "set", "grid", "search", "benchmarks", "methods")


class SweepError(ValueError):
    """A bad sweep file or option; the message is one line meant for the user."""


# ---------------------------------------------------------------------- the grid
@dataclass
class Axis:
    """A named entry (a method or a benchmark) with its fixed keys and its grid."""

    name: str
    set: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    space: dict[str, Param] = field(default_factory=dict)  # searched keys (with `search`)


@dataclass
class SweepSpec:
    """What to run: every benchmark x method x grid point x seed."""

    benchmarks: list[Axis]
    methods: list[Axis]
    seeds: list[int]
    set: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    out: str | None = None
    search: SearchSpec | None = None


def parse_seeds(value: Any, where: str = "seeds") -> list[int]:
    """``3`` -> [0, 1, 2]; ``[0, 5]`` or ``"0,5"`` -> [0, 5]."""
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",")] if "," in value else int(value)
        except ValueError:
            raise SweepError(
                f"{where} must be a count or a list of integers, got {value!r}"
            ) from None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise SweepError(f"{where} must be at least 1, got {value}")
        return list(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        if len(set(value)) != len(value):
            raise SweepError(f"{where} lists a seed twice: {value}")
        return list(value)
    raise SweepError(f"{where} must be a count or a list of integers, got {value!r}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SweepError(f"{where} must be a mapping of config keys to values")
    return dict(value)


def _grid(value: Any, where: str) -> dict[str, list[Any]]:
    grid = _mapping(value, where)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}.{key} must be a non-empty list of values to try")
    return grid


def _axes(value: Any, where: str) -> list[Axis]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [Axis(v) for v in value]
    if isinstance(value, dict) and value:
        out = []
        for name, body in value.items():
            body = _mapping(body, f"{where}.{name}")
            unknown = set(body) - {"set", "grid", "space"}
            if unknown:
                raise SweepError(
                    f"{where}.{name}: unknown key {sorted(unknown)[0]!r}; use set, grid, space"
                )
            out.append(
                Axis(
                    str(name),
                    _mapping(body.get("set"), f"{where}.{name}.set"),
                    _grid(body.get("grid"), f"{where}.{name}.grid"),
                    parse_space(body.get("space"), f"{where}.{name}.space"),
                )
            )
        return out
    raise SweepError(f"{where} must be a list of names or a mapping of names to settings")


def parse_spec(data: dict[str, Any]) -> SweepSpec:
    """Validate a sweep file's content (see the module docstring)."""
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        raise SweepError(f"unknown sweep key {unknown[0]!r}; valid keys: {', '.join(SPEC_KEYS)}")
    for key in ("benchmarks", "methods"):
        if key not in data:
            raise SweepError(f"the sweep file names no {key}")
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise SweepError("out must be a folder name")
    try:
        spec = SweepSpec(
            benchmarks=_axes(data["benchmarks"], "benchmarks"),
            methods=_axes(data["methods"], "methods"),
            seeds=parse_seeds(data.get("seeds", 1)),
            set=_mapping(data.get("set"), "set"),
            grid=_grid(data.get("grid"), "grid"),
            out=out,
            search=None if data.get("search") is None else parse_search(data["search"]),
        )
    except SearchError as e:
        raise SweepError(str(e)) from None
    for axes, what in ((spec.benchmarks, "benchmark"), (spec.methods, "method")):
        names = [a.name for a in axes]
        if len(set(names)) != len(names):
            raise SweepError(f"a {what} is listed twice: {', '.join(names)}")
    grids = [spec.grid] + [a.grid for a in spec.benchmarks + spec.methods]
    spaces = [a.space for a in spec.benchmarks + spec.methods]
    if spec.search is None and any(spaces):
        raise SweepError("a `space` needs a `search` section (or use a `grid`)")
    if spec.search is not None:
        if any(grids):
            raise SweepError("use either a grid or a search, not both")
        if not all(search_space(spec, b, m) for b in spec.benchmarks for m in spec.methods):
            raise SweepError("the search has no space to search (search.space or a `space`)")
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    try:
        return parse_spec(load_yaml(path))
    except ConfigError as e:
        raise SweepError(str(e)) from None


def _points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def trial_config(
    spec: SweepSpec,
    bench: Axis,
    method: Axis,
    point: dict[str, Any],
    seed: int,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """One trial's config (:func:`retain.experiment.resolve`): the sweep's ``set``, the
    benchmark's and the method's, the grid or search ``point``, the seed, and ``base``
    (``--set``) over everything."""
    return resolve(
        axes=[
            ("sweep set", spec.set),
            ("benchmark", {"benchmark": bench.name, **bench.set}),
            ("method", {"method": method.name, **method.set}),
            ("grid" if spec.search is None else "search", point),
            ("seed", {"seed": seed}),
        ],
        sets=base,
    )


def expand(spec: SweepSpec, base: dict[str, Any] | None = None) -> list[RunConfig]:
    """Every trial's config of a grid sweep: benchmarks x methods x grid points x seeds, in
    that order. ``base`` (e.g. from ``--set``) is applied last, over everything."""
    configs = []
    for bench in spec.benchmarks:
        for method in spec.methods:
            grid = {**spec.grid, **bench.grid, **method.grid}
            for point in _points(grid):
                for seed in spec.seeds:
                    configs.append(trial_config(spec, bench, method, point, seed, base))
    names = [json.dumps(c.to_dict(), sort_keys=True) for c in configs]
    if len(set(names)) != len(names):
        raise SweepError("the sweep describes the same trial twice (a grid value repeated?)")
    return configs


def search_space(spec: SweepSpec, bench: Axis, method: Axis) -> dict[str, Param]:
    assert spec.search is not None
    return {**spec.search.space, **bench.space, **method.space}


def _example(param: Param) -> Any:
    if param.choices is not None:
        return param.choices[0]
    return int(param.low) if param.integer else param.low  # type: ignore[arg-type]


def check_search(spec: SweepSpec, base: dict[str, Any] | None = None) -> None:
    """Build one config per benchmark x method with example values of the space, so that a
    bad key or value is refused before anything runs."""
    for bench in spec.benchmarks:
        for method in spec.methods:
            point = {k: _example(p) for k, p in search_space(spec, bench, method).items()}
            trial_config(spec, bench, method, point, spec.seeds[0], base)


@dataclass
class SearchOutcome:
    studies: list[StudySummary]
    trials: list[Trial]  # every trial of every point asked so far
    failed: list[TrialResult]


def run_search(
    spec: SweepSpec,
    out: Path,
    executor: Executor,
    batch: int,
    base: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> SearchOutcome:
    """Every benchmark x method study of ``spec.search`` (see :mod:`retain.search`), its points'
    seeds run as trials under ``out`` with ``executor``, ``batch`` points at a time."""
    assert spec.search is not None
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    summaries, failed = [], []
    for bench in spec.benchmarks:
        for method in spec.methods:
            name = f"{bench.name}-{method.name}"
            space = search_space(spec, bench, method)
            study = open_study(out / SEARCH_DIR / f"{name}.log", name, spec.search)

            def run_points(points: dict[int, dict[str, Any]], _b=bench, _m=method, _n=name):
                trials, owner = [], {}
                for number, point in points.items():
                    for seed in spec.seeds:
                        trial = Trial.under(out, trial_config(spec, _b, _m, point, seed, base))
                        trials.append(trial)
                        owner[trial.name] = number
                say(f"{_n}: points {', '.join(f'#{n}' for n in points)}")
                outcome = run_trials(trials, out, executor, log=say)
                failed.extend(outcome.failed)
                grouped: dict[int, list[TrialResult]] = {n: [] for n in points}
                for r in outcome.results:
                    grouped[owner[r.name]].append(r)
                return grouped

            summaries.append(run_study(study, space, spec.search, batch, run_points))
    return SearchOutcome(summaries, search_trials(spec, out, base), failed)


def search_trials(spec: SweepSpec, out: Path, base: dict[str, Any] | None = None) -> list[Trial]:
    """The trials of every point the studies under ``out`` have asked (in study order)."""
    assert spec.search is not None
    trials = []
    for bench in spec.benchmarks:
        for method in spec.methods:
            name = f"{bench.name}-{method.name}"
            study = open_study(out / SEARCH_DIR / f"{name}.log", name, spec.search)
            keys = set(search_space(spec, bench, method))
            for t in study.get_trials(deepcopy=False):
                if set(t.params) != keys:
                    continue
                for seed in spec.seeds:
                    trials.append(
                        Trial.under(out, trial_config(spec, bench, method, t.params, seed, base))
                    )
    return trials


# ---------------------------------------------------------------------- running
class StatusLog:
    """``trials.json`` in the sweep folder: per trial, what every invocation did with it
    (action: done = skipped as finished, resume, start, diverged; status: ok, failed or
    diverged), rewritten atomically after every result. Several processes may share one
    folder (two compares on one ``--out``): every record re-reads the file and adds its entry
    under the lock ``.trials.json.lock``, so that no process drops another's entries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = path.parent / f".{path.name}.lock"
        self.trials: dict[str, list[dict[str, Any]]] = self._read()
        self.stamp = _dt.datetime.now().isoformat(timespec="seconds")

    def _read(self) -> dict[str, list[dict[str, Any]]]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {k: list(v) for k, v in data.get("trials", {}).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}  # a status file is a log, never a reason to stop

    def record(self, result: TrialResult) -> None:
        entry = {k: v for k, v in asdict(result).items() if k not in ("metrics", "name")}
        with folder_lock(self.lock):
            self.trials = self._read()
            self.trials.setdefault(result.name, []).append({"at": self.stamp, **entry})
            runio.write_json(self.path, {"trials": self.trials})


@dataclass
class SweepOutcome:
    results: list[TrialResult]

    @property
    def failed(self) -> list[TrialResult]:
        """The trials that failed (a diverged trial is a result, not a failure)."""
        return [r for r in self.results if r.status == "failed"]


def run_trials(
    trials: list[Trial],
    out: Path,
    executor: Executor,
    log: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Run (skip, resume) ``trials`` with ``executor``; record every result in
    ``out/trials.json`` and announce it through ``log`` (default: a line on stderr)."""
    out.mkdir(parents=True, exist_ok=True)
    status = StatusLog(out / STATUS)
    results: list[TrialResult] = []
    total = len(trials)
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))

    def on_result(result: TrialResult) -> None:
        results.append(result)
        status.record(result)
        say(f"[{len(results)}/{total}] {describe(result)}")

    trials = [Trial(t.config, t.run_dir.resolve()) for t in trials]  # Ray workers' cwd differs
    executor.run(trials, on_result)
    order = {t.name: i for i, t in enumerate(trials)}
    results.sort(key=lambda r: order.get(r.name, total))
    return SweepOutcome(results)


def describe(result: TrialResult) -> str:
    """One line: the trial, what was done, and its final accuracies or its error."""
    if result.status == "diverged":
        return f"{result.name}: DIVERGED ({result.action}): {result.error}"
    if not result.ok:
        return f"{result.name}: FAILED ({result.action}): {result.error}"
    verb = {"done": "already finished", "resume": "resumed", "start": "trained"}[result.action]
    parts = []
    for key, label in (("task_aware", "TAw"), ("task_agnostic", "TAg")):
        acc = result.metrics.get(key, {}).get("summary", {}).get("acc")
        if isinstance(acc, float) and acc == acc:
            parts.append(f"{label} ACC {100 * acc:.2f}")
    took = f" in {result.seconds:.1f} s" if result.action != "done" else ""
    return f"{result.name}: {verb}{took}" + (f" ({', '.join(parts)})" if parts else "")
