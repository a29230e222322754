"""Random and TPE hyperparameter search for sweeps, through Optuna.

A sweep file with a ``search`` section (instead of a ``grid``) samples its hyperparameters::

    search:
      sampler: tpe                 # or random
      trials: 12                   # points tried per benchmark x method
      seed: 0                      # the sampler's seed
      metric: task_aware.acc       # <task_aware|task_agnostic>.<acc|bwt|fwt|forgetting>
      direction: maximize          # or minimize
      space:                       # for every method; a method may add its own `space`
        lr: {low: 0.001, high: 0.1, log: true}
        batch_size: {choices: [32, 64]}
        epochs: {low: 1, high: 4, int: true}

Every benchmark x method pair is one Optuna study, kept in ``OUT/search/<benchmark>-<method>.log``
(Optuna's journal file). A point is run with every seed of the sweep, each seed an ordinary
trial folder, and scored by the metric's mean over the seeds (a point with a failed seed or an
undefined metric counts as failed). Points are asked in batches of the executor's width, so
they run in parallel on Ray. Running the sweep again continues each study: finished points
stay, points that were running when the sweep was killed are run again with the same values
(their trial folders resume), and new points are asked until ``trials`` are done. The sampler
continues from the finished points, so an interrupted search explores like, but not point for
point as, an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retain.trials import TrialResult

SAMPLERS = ("tpe", "random")
SETTINGS = ("task_aware", "task_agnostic")
METRICS = ("acc", "bwt", "fwt", "forgetting")
SEARCH_KEYS = ("sampler", "trials", "seed", "metric", "direction", "space")
OPTUNA_HINT = (
    "a search needs Optuna: `pip install 'retain-cl[sweep]'` (or 'optuna'); a grid does not"
)


class SearchError(ValueError):
    """A bad search section; the message is one line meant for the user."""


@dataclass(frozen=True)
class Param:
    """One searched config key: a float or int range (``log`` scale optional) or choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial suggests for this key."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


def parse_param(name: str, body: Any, where: str) -> Param:
    if not isinstance(body, dict):
        raise SearchError(f"{where}.{name} must be {{low, high[, log, int]}} or {{choices}}")
    unknown = set(body) - {"low", "high", "log", "int", "choices"}
    if unknown:
        raise SearchError(f"{where}.{name}: unknown key {sorted(unknown)[0]!r}")
    if "choices" in body:
        choices = body["choices"]
        if not isinstance(choices, list) or not choices or set(body) != {"choices"}:
            raise SearchError(f"{where}.{name}.choices must be a non-empty list, alone")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in choices):
            raise SearchError(f"{where}.{name}.choices: only numbers, strings, booleans, null")
        return Param(name, choices=tuple(choices))
    low, high = body.get("low"), body.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise SearchError(f"{where}.{name} needs numbers low and high")
    if not low < high:
        raise SearchError(f"{where}.{name}: low must be below high")
    log, integer = body.get("log", False), body.get("int", False)
    if not isinstance(log, bool) or not isinstance(integer, bool):
        raise SearchError(f"{where}.{name}: log and int must be true or false")
    if log and low <= 0:
        raise SearchError(f"{where}.{name}: a log range needs low > 0")
    return Param(name, float(low), float(high), log, integer)


def parse_space(data: Any, where: str) -> dict[str, Param]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SearchError(f"{where} must map config keys to ranges")
    return {str(k): parse_param(str(k), v, where) for k, v in data.items()}


@dataclass
class SearchSpec:
    """The ``search`` section of a sweep file."""

    sampler: str = "tpe"
    trials: int = 10
    seed: int = 0
    metric: str = "task_aware.acc"
    direction: str = "maximize"
    space: dict[str, Param] = field(default_factory=dict)


def parse_search(data: Any) -> SearchSpec:
    """Validate a ``search`` section (see the module docstring)."""
    if not isinstance(data, dict):
        raise SearchError("search must be a mapping")
    unknown = [k for k in data if k not in SEARCH_KEYS]
    if unknown:
        raise SearchError(f"search: unknown key {unknown[0]!r}; valid: {', '.join(SEARCH_KEYS)}")
    spec = SearchSpec(
        sampler=data.get("sampler", "tpe"),
        trials=data.get("trials", 10),
        seed=data.get("seed", 0),
        metric=data.get("metric", "task_aware.acc"),
        direction=data.get("direction", "maximize"),
        space=parse_space(data.get("space"), "search.space"),
    )
    if spec.sampler not in SAMPLERS:
        raise SearchError(f"search.sampler must be one of {', '.join(SAMPLERS)}")
    for key in ("trials", "seed"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < (key == "trials"):
            raise SearchError(f"search.{key} must be an integer >= {int(key == 'trials')}")
    parts = spec.metric.split(".") if isinstance(spec.metric, str) else []
    if len(parts) != 2 or parts[0] not in SETTINGS or parts[1] not in METRICS:
        raise SearchError(
            f"search.metric must be <{'|'.join(SETTINGS)}>.<{'|'.join(METRICS)}>, "
            f"got {spec.metric!r}"
        )
    if spec.direction not in ("maximize", "minimize"):
        raise SearchError("search.direction must be maximize or minimize")
    return spec


def score(results: list[TrialResult], metric: str) -> float | None:
    """Mean of ``metric`` over the seeds' results; None when a seed failed or it is undefined."""
    setting, name = metric.split(".")
    values = []
    for r in results:
        if not r.ok:
            return None
        v = r.metrics.get(setting, {}).get("summary", {}).get(name)
        if not isinstance(v, (int, float)) or math.isnan(v):
            return None
        values.append(float(v))
    return sum(values) / len(values) if values else None


def _optuna():
    try:
        import optuna
    except ImportError:
        raise SearchError(OPTUNA_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(path: Path, name: str, spec: SearchSpec):
    """The study of one benchmark x method, created or loaded from its journal file."""
    optuna = _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name,
        storage=JournalStorage(JournalFileBackend(str(path))),
        direction=spec.direction,
        load_if_exists=True,
    )
    # a sampler's random stream is not stored: seeded again with the seed alone, a continued
    # study would draw its first points over again, so the seed moves on with the trials
    seed = spec.seed + len(study.get_trials(deepcopy=False))
    sampler = optuna.samplers.TPESampler if spec.sampler == "tpe" else optuna.samplers.RandomSampler
    study.sampler = sampler(seed=seed)
    return study


#: runs the trials of a batch of points: {point number: [(seed trial results)]}
RunPoints = Callable[[dict[int, dict[str, Any]]], dict[int, list[TrialResult]]]


@dataclass
class StudySummary:
    name: str
    finished: int
    failed: int
    best_value: float | None
    best_params: dict[str, Any]


def run_study(
    study: Any, space: dict[str, Param], spec: SearchSpec, batch: int, run_points: RunPoints
) -> StudySummary:
    """Ask points (the interrupted ones first, with their values) in batches of ``batch``, run
    them with ``run_points``, tell their scores, until ``spec.trials`` points are done."""
    optuna = _optuna()
    state = optuna.trial.TrialState
    while True:
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in (state.COMPLETE, state.FAIL) for t in trials)
        points = {}
        for t in trials:
            if t.state != state.RUNNING:
                continue
            if set(t.params) != set(space):  # killed while its values were being drawn
                study.tell(t.number, state=state.FAIL)
                done += 1
            else:
                points[t.number] = dict(t.params)
        while done + len(points) < spec.trials and len(points) < batch:
            asked = study.ask()
            points[asked.number] = {name: p.suggest(asked) for name, p in space.items()}
        points = dict(list(points.items())[: max(batch, 1)])
        if not points:
            break
        results = run_points(points)
        for number in points:
            value = score(results.get(number, []), spec.metric)
            if value is None:
                study.tell(number, state=state.FAIL)
            else:
                study.tell(number, value)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == state.COMPLETE]
    best = study.best_trial if complete else None
    return StudySummary(
        study.study_name,
        len(complete),
        sum(t.state == state.FAIL for t in trials),
        None if best is None else best.value,
        {} if best is None else dict(best.params),
    )
