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

Trials are named and found again by :func:`retain.trials.trial_name`, so running the same
sweep again skips the finished trials and resumes the interrupted ones. They run one after
another in this process (``workers=1``) or as Ray tasks (:func:`run_on_ray`: an embedded
local Ray by default, a cluster when given its address; ``pip install 'retain[sweep]'``). A
failed trial is recorded and reported; the others go on. At the end ``trials.json`` holds
every trial's history (what each invocation did with it), and ``report/`` the report of the
sweep's trials (:mod:`retain.report`).
"""

from __future__ import annotations

import datetime as _dt
import inspect
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retain.engine import runio
from retain.experiment import ConfigError, RunConfig, apply, load_yaml
from retain.trials import Trial, TrialResult, run_trial

STATUS = "trials.json"
REPORT_DIR = "report"
RAY_HINT = (
    "Ray is not installed: `pip install 'retain[sweep]'` (or 'ray[default]') to run trials in "
    "parallel or on a cluster, or use --workers 1 to run them one after another here"
)
SPEC_KEYS = ("out", "seeds", "set", "grid", "benchmarks", "methods")


class SweepError(ValueError):
    """A bad sweep file or option; the message is one line meant for the user."""


# ---------------------------------------------------------------------- the grid
@dataclass
class Axis:
    """A named entry (a method or a benchmark) with its fixed keys and its grid."""

    name: str
    set: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class SweepSpec:
    """What to run: every benchmark x method x grid point x seed."""

    benchmarks: list[Axis]
    methods: list[Axis]
    seeds: list[int]
    set: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    out: str | None = None


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
            unknown = set(body) - {"set", "grid"}
            if unknown:
                raise SweepError(
                    f"{where}.{name}: unknown key {sorted(unknown)[0]!r}; use set, grid"
                )
            out.append(
                Axis(
                    str(name),
                    _mapping(body.get("set"), f"{where}.{name}.set"),
                    _grid(body.get("grid"), f"{where}.{name}.grid"),
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
    return SweepSpec(
        benchmarks=_axes(data["benchmarks"], "benchmarks"),
        methods=_axes(data["methods"], "methods"),
        seeds=parse_seeds(data.get("seeds", 1)),
        set=_mapping(data.get("set"), "set"),
        grid=_grid(data.get("grid"), "grid"),
        out=out,
    )


def load_spec(path: str | Path) -> SweepSpec:
    try:
        return parse_spec(load_yaml(path))
    except ConfigError as e:
        raise SweepError(str(e)) from None


def _points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def make_config(layers: Iterable[tuple[str, dict[str, Any]]]) -> RunConfig:
    """A validated config from ``(source, updates)`` layers applied in order (later wins);
    the method's arguments and the benchmark's name and arguments are checked too."""
    config: dict[str, Any] = {}
    for source, updates in layers:
        apply(config, updates, source)
    try:
        rc = RunConfig(**config)
        rc.validate()
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if rc.threads < 1:
        raise ConfigError(f"threads must be at least 1, got {rc.threads}")
    check_names(rc)
    return rc


def check_names(config: RunConfig) -> None:
    """Unknown method, method argument, benchmark or benchmark argument: ConfigError, before
    anything is trained (building a method is cheap; benchmarks are not built)."""
    from retain.data import BENCHMARKS
    from retain.methods import make_method

    try:
        make_method(config.method, **config.method_args)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if config.benchmark not in BENCHMARKS:
        raise ConfigError(
            f"unknown benchmark {config.benchmark!r}; valid names: {', '.join(BENCHMARKS)}"
        )
    accepted = list(inspect.signature(BENCHMARKS[config.benchmark]).parameters)
    for key in config.benchmark_args:
        if key not in accepted:
            raise ConfigError(
                f"benchmark {config.benchmark!r} does not accept {key}; "
                f"accepted: {', '.join(accepted)}"
            )


def expand(spec: SweepSpec, base: dict[str, Any] | None = None) -> list[RunConfig]:
    """Every trial's config: benchmarks x methods x grid points x seeds, in that order.
    ``base`` (e.g. from ``--set``) is applied last, over everything."""
    configs = []
    for bench in spec.benchmarks:
        for method in spec.methods:
            grid = {**spec.grid, **bench.grid, **method.grid}
            for point in _points(grid):
                for seed in spec.seeds:
                    configs.append(
                        make_config(
                            [
                                ("sweep set", spec.set),
                                ("benchmark", {"benchmark": bench.name, **bench.set}),
                                ("method", {"method": method.name, **method.set}),
                                ("grid", point),
                                ("seed", {"seed": seed}),
                                ("--set", base or {}),
                            ]
                        )
                    )
    names = [json.dumps(c.to_dict(), sort_keys=True) for c in configs]
    if len(set(names)) != len(names):
        raise SweepError("the sweep describes the same trial twice (a grid value repeated?)")
    return configs


# ---------------------------------------------------------------------- running
Reporter = Callable[[TrialResult], None]


def run_sequential(trials: list[Trial], on_result: Reporter) -> None:
    """Every trial in this process, one after another."""
    for trial in trials:
        on_result(run_trial(trial))


_WATCHING = False


def _exit_with_parent(interval: float = 0.5) -> None:
    """In a Ray worker: exit as soon as the process that started it (the raylet) is gone, so
    that killing a sweep (its driver and, with an embedded Ray, the raylet) also stops its
    trials instead of leaving them to finish unseen. Runs in a daemon thread."""
    import threading

    global _WATCHING
    if _WATCHING:  # workers are reused: one watcher each
        return
    _WATCHING = True
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="retain-exit-with-parent").start()


def _ray_trial(trial: Trial) -> TrialResult:
    """What a Ray worker runs: :func:`~retain.trials.run_trial`, stopping with its raylet."""
    _exit_with_parent()
    return run_trial(trial)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def run_on_ray(
    trials: list[Trial],
    on_result: Reporter,
    workers: int | None = None,
    address: str | None = None,
) -> None:
    """Every trial as a Ray task (one CPU per torch thread), results reported as they come.

    Without ``address`` an embedded local Ray with ``workers`` CPUs (default: all) is started
    and stopped here; with it, the running cluster at ``address`` is joined (the trial folders
    must then be on a filesystem every node sees, and retain installed on every node).
    """
    try:
        import ray
    except ImportError:
        raise SweepError(RAY_HINT) from None

    own = not ray.is_initialized()
    if own:
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, **kwargs)
    try:
        remote = ray.remote(max_retries=0)(_ray_trial)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        pending = {
            remote.options(num_cpus=min(t.config.threads, cpus)).remote(t): t for t in trials
        }
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            trial = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # the worker died (memory, signal): report, go on
                first = (str(e).splitlines() or [""])[0]
                result = TrialResult(
                    trial.name, str(trial.run_dir), "?", "failed", f"{type(e).__name__}: {first}"
                )
            on_result(result)
    finally:
        if own:
            ray.shutdown()


class StatusLog:
    """``trials.json`` in the sweep folder: per trial, what every invocation did with it
    (action: done = skipped as finished, resume, start; status: ok or failed), rewritten
    atomically after every result."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trials: dict[str, list[dict[str, Any]]] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                self.trials = {k: list(v) for k, v in data.get("trials", {}).items()}
            except (OSError, ValueError, AttributeError):
                self.trials = {}  # a status file is a log, never a reason to stop
        self.stamp = _dt.datetime.now().isoformat(timespec="seconds")

    def record(self, result: TrialResult) -> None:
        entry = {k: v for k, v in asdict(result).items() if k not in ("metrics", "name")}
        self.trials.setdefault(result.name, []).append({"at": self.stamp, **entry})
        runio.write_json(self.path, {"trials": self.trials})


@dataclass
class SweepOutcome:
    results: list[TrialResult]

    @property
    def failed(self) -> list[TrialResult]:
        return [r for r in self.results if not r.ok]


def run_trials(
    trials: list[Trial],
    out: Path,
    workers: int | None = 1,
    address: str | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Run (skip, resume) ``trials`` sequentially (``workers == 1`` and no ``address``) or on
    Ray; record every result in ``out/trials.json`` and announce it through ``log``."""
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
    if workers == 1 and not address:
        run_sequential(trials, on_result)
    else:
        run_on_ray(trials, on_result, workers=workers, address=address)
    order = {t.name: i for i, t in enumerate(trials)}
    results.sort(key=lambda r: order.get(r.name, total))
    return SweepOutcome(results)


def describe(result: TrialResult) -> str:
    """One line: the trial, what was done, and its final accuracies or its error."""
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
