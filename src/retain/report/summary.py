"""Group finished runs by (benchmark, method, config) and summarise each group over its seeds.

Runs belong to one group when their resolved configs are equal except for the keys in
:data:`NOT_SETTINGS` (the seed, and how the run was executed rather than what it computes).
Diverged runs form groups of their own (:attr:`Group.diverged`), which have no metrics.
Groups of the same benchmark (name and ``benchmark_args``) form one :class:`Table`. A group's
label is its method name plus the settings that tell it apart from the other groups of its
table (``ewc (lamb=100)``); the settings all groups share are the table's ``common``.
"""

from __future__ import annotations

import inspect
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from retain.report.protocol import method_protocol
from retain.report.runs import RunRecord

#: config keys that do not change what a run computes, or that vary across a group's runs
NOT_SETTINGS = ("seed", "threads", "checkpoint_every", "eval_batch_size")
SETTINGS = ("task_aware", "task_agnostic")
SUMMARIES = ("acc", "bwt", "fwt", "forgetting")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of the defined values (NaN/None left out)."""

    mean: float
    std: float | None  # None with a single value
    n: int

    @classmethod
    def of(cls, values: list[float | None]) -> Stat | None:
        vals = [float(v) for v in values if v is not None and not math.isnan(v)]
        if not vals:
            return None
        std = statistics.stdev(vals) if len(vals) > 1 else None
        return cls(statistics.fmean(vals), std, len(vals))

    def format(self, scale: float = 100.0, digits: int = 2) -> str:
        mean = f"{self.mean * scale:.{digits}f}"
        if mean.startswith("-") and float(mean) == 0:
            mean = mean[1:]  # -0.00 reads as a loss that is not there
        return mean if self.std is None else f"{mean} ± {self.std * scale:.{digits}f}"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method_args": {"lamb": 1}, "model_args": {}}`` -> ``{"method_args.lamb": 1}``;
    lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):  # an empty mapping (no arguments) adds no key
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def capacity(run: RunRecord) -> float | None:
    """CAP (WSN's memory of the used weights plus the encoded task masks, as a fraction of the
    dense weights) for masked methods that report one, else None."""
    cap = (run.method_metrics.get("capacity") or {}).get("total", {}).get("cap")
    return float(cap) if isinstance(cap, (int, float)) else None


@dataclass
class Group:
    """The runs of one (benchmark, method, config), one per seed."""

    benchmark: str
    method: str
    settings: dict[str, Any]  # flattened config without NOT_SETTINGS
    runs: list[RunRecord]
    label: str = ""
    #: the runs' training diverged: no metrics (every stat None), never ranked
    diverged: bool = False

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]

    @property
    def n_tasks(self) -> int:
        return self.runs[0].task_aware.n_tasks

    def stat(self, fn: Callable[[RunRecord], float | None]) -> Stat | None:
        if self.diverged:
            return None
        return Stat.of([fn(r) for r in self.runs])

    def metric(self, setting: str, name: str) -> Stat | None:
        """Mean ± std over seeds of ``name`` (acc, bwt, fwt, forgetting) in ``setting``."""
        return self.stat(lambda r: getattr(getattr(r, setting), name)())

    @property
    def protocol(self) -> str | None:
        """The heads the runs trained on, ``"task"`` or ``"seen"`` (see
        :mod:`retain.report.protocol`); None when the method is not registered here."""
        args = self.runs[0].config.get("method_args")
        return method_protocol(self.method, args if isinstance(args, dict) else {})

    def has_setting(self, setting: str) -> bool:
        return self.metric(setting, "acc") is not None

    def capacity(self) -> Stat | None:
        return self.stat(capacity)

    def seconds(self) -> Stat | None:
        return self.stat(lambda r: r.seconds)

    def curve(self, setting: str) -> list[Stat | None]:
        """Average accuracy over the tasks seen so far, after each task (mean ± std)."""
        out = []
        for i in range(self.n_tasks):
            vals = []
            for r in self.runs:
                row = getattr(r, setting).rows[i]
                vals.append(statistics.fmean(row[: i + 1]))
            out.append(Stat.of(vals))
        return out

    def mean_matrix(self, setting: str) -> list[list[float]]:
        """The accuracy matrix averaged over seeds (NaN where undefined)."""
        t = self.n_tasks
        out = []
        for i in range(t):
            row = []
            for j in range(t):
                s = Stat.of([getattr(r, setting).rows[i][j] for r in self.runs])
                row.append(math.nan if s is None else s.mean)
            out.append(row)
        return out


@dataclass
class Table:
    """The groups of one benchmark (with its arguments), and the settings they share."""

    benchmark: str
    title: str
    groups: list[Group]
    common: dict[str, Any] = field(default_factory=dict)

    @property
    def has_capacity(self) -> bool:
        return any(g.capacity() is not None for g in self.groups)

    @property
    def has_time(self) -> bool:
        return any(g.seconds() is not None for g in self.groups)


def _short(key: str) -> str:
    return key.removeprefix("method_args.")


def format_value(value: Any) -> str:
    """Strings as they are, floats to 4 significant digits (searched values), the rest as
    JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return _canon(value)


def _signature_default(fn: Any, name: str) -> tuple[bool, Any]:
    try:
        param = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return False, None
    if param is None or param.default is inspect.Parameter.empty:
        return False, None
    return True, param.default


def default_setting(group: Group, key: str) -> tuple[bool, Any]:
    """(known, value): the default a run takes for an argument key its config leaves out
    (``method_args.x`` from the method, ``model_args.x`` from the backbone,
    ``benchmark_args.x`` from the benchmark); ``(False, None)`` when it cannot be told
    (another key, a nested argument, a name not registered here)."""
    from retain.data import BENCHMARKS
    from retain.methods import REGISTRY
    from retain.models import MODELS

    top, _, name = key.partition(".")
    if not name or "." in name:
        return False, None
    owner: Any = {
        "method_args": REGISTRY.get(group.method),
        "model_args": MODELS.get(str(group.settings.get("model", "mlp"))),
        "benchmark_args": BENCHMARKS.get(group.benchmark),
    }.get(top)
    if owner is None:
        return False, None
    return _signature_default(owner.__init__ if isinstance(owner, type) else owner, name)


def _setting(group: Group, key: str) -> tuple[bool, Any]:
    """(known, value) of ``key`` in ``group``: its own, else the default it ran with."""
    if key in group.settings:
        return True, group.settings[key]
    return default_setting(group, key)


def _label(group: Group, varying: list[str]) -> str:
    """The method name and the ``key=value`` of the ``varying`` keys; a key the group's config
    leaves out shows the default it ran with (left out when that cannot be told)."""
    parts = []
    for k in varying:
        known, value = _setting(group, k)
        if known:
            parts.append(f"{_short(k)}={format_value(value)}")
    return group.method + (f" ({', '.join(parts)})" if parts else "")


def _varying(groups: list[Group], keys: list[str]) -> list[str]:
    """The keys whose value differs between ``groups`` (a left-out key counts as its
    default, or as missing when that cannot be told)."""

    def value(g: Group, k: str) -> str:
        known, v = _setting(g, k)
        return _canon(v) if known else "<missing>"

    return [k for k in keys if len({value(g, k) for g in groups}) > 1]


def build_tables(runs: list[RunRecord]) -> list[Table]:
    """Group ``runs`` (see the module docstring) into one table per benchmark, in the order
    first seen; groups keep the order in which their first run was found."""
    groups: dict[tuple[str, str, str], Group] = {}
    for run in runs:
        settings = {
            k: v for k, v in flatten(run.config).items() if k.split(".")[0] not in NOT_SETTINGS
        }
        diverged = run.diverged is not None
        key = (run.benchmark, run.method, _canon(settings) + ("/diverged" if diverged else ""))
        if key not in groups:
            groups[key] = Group(run.benchmark, run.method, settings, [], diverged=diverged)
        groups[key].runs.append(run)

    by_bench: dict[str, list[Group]] = {}
    for g in groups.values():
        bench_args = {k: v for k, v in g.settings.items() if k.startswith("benchmark_args.")}
        by_bench.setdefault(_canon([g.benchmark, bench_args]), []).append(g)

    tables = []
    for members in by_bench.values():
        for g in members:
            g.runs.sort(key=lambda r: _canon(r.seed))
        keys = sorted({k for g in members for k in g.settings} - {"benchmark", "method"})
        general = [k for k in keys if not k.startswith("method_args.")]
        vary = set(_varying(members, general))
        for g in members:
            same = [h for h in members if h.method == g.method]
            own_keys = sorted({k for h in same for k in h.settings if k.startswith("method_args.")})
            g.label = _label(g, [k for k in general if k in vary] + _varying(same, own_keys))
        first = members[0]
        common = {
            k: first.settings[k]
            for k in general
            if k not in vary and k in first.settings and not k.startswith("benchmark_args.")
        }
        bench_args = {
            _short(k).removeprefix("benchmark_args."): v
            for k, v in first.settings.items()
            if k.startswith("benchmark_args.")
        }
        title = first.benchmark + (
            " (" + ", ".join(f"{k}={format_value(v)}" for k, v in bench_args.items()) + ")"
            if bench_args
            else ""
        )
        tables.append(Table(first.benchmark, title, members, common))
    return tables
