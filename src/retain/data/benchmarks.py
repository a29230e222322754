"""The registry of named benchmarks: ``get_benchmark("split-fmnist", n_tasks=5, seed=0)``.

A registered benchmark is a :class:`BenchmarkEntry`: one family's builder (a class split, pixel
permutations, a rotating stream, ...; :mod:`retain.data.families`) and the data that makes it
one benchmark: its dataset, the keyword arguments it accepts with their defaults, and what it
records in ``info``. The entries themselves are listed in :mod:`retain.data.catalog`. A plain
function taking keyword arguments only can be registered too, with :func:`register`.

``seed`` drives a scenario's randomness (class shuffling when asked, pixel permutations, random
angles); the train/test split of the sources that have none of their own (MNIST-5k, digits) is
fixed by ``split_seed`` (default 0), so runs with different seeds are scored on the same test
images.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from retain.data.benchmark import Benchmark, DataError

BenchmarkBuilder = Callable[..., Benchmark]

#: name -> builder (a :class:`BenchmarkEntry` or a registered function); each has a one-line
#: ``description`` attribute.
BENCHMARKS: dict[str, BenchmarkBuilder] = {}


@dataclass(frozen=True, eq=False)
class BenchmarkEntry:
    """One registered benchmark: a family's builder and the data that makes it this benchmark
    (as timm registers model variants over one builder).

    Calling the entry with keyword arguments builds the benchmark:
    ``build(name, facts={k: arguments[k] for k in record}, **options, **arguments)``, where
    ``arguments`` are ``parameters`` updated by the call's keywords. ``inspect.signature`` of
    an entry lists ``parameters`` as keyword-only arguments, like a function's.

    Attributes:
        name: the registry name, also the name of the built benchmark.
        description: one line, shown by ``retain list``.
        build: the family's builder.
        parameters: the keyword arguments callers may pass, with their defaults, in order.
        options: the builder's fixed arguments for this benchmark (e.g. its ``dataset``).
        record: arguments the benchmark records in its ``info``, right after ``source``.
        notes: more about the benchmark, appended to its ``__doc__``.
        single_pass: its training samples are one stream to be seen once (``epochs`` must
            be 1): checked with the config, before anything is built.
    """

    name: str
    description: str
    build: BenchmarkBuilder
    parameters: Mapping[str, object]
    options: Mapping[str, object] = field(default_factory=dict)
    record: tuple[str, ...] = ()
    notes: str = ""
    single_pass: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        unknown = [k for k in self.record if k not in self.parameters]
        if unknown:
            raise ValueError(f"benchmark {self.name!r} records unknown arguments {unknown}")
        keyword = inspect.Parameter.KEYWORD_ONLY
        signature = inspect.Signature(
            [inspect.Parameter(k, keyword, default=v) for k, v in self.parameters.items()]
        )
        object.__setattr__(self, "__signature__", signature)
        doc = f"{self.description}.\n\n{self.notes}" if self.notes else f"{self.description}."
        object.__setattr__(self, "__doc__", doc)

    def __call__(self, **kwargs: object) -> Benchmark:
        unknown = [k for k in kwargs if k not in self.parameters]
        if unknown:
            raise TypeError(f"{self.name}() got an unexpected keyword argument {unknown[0]!r}")
        arguments = {**self.parameters, **kwargs}
        facts = {k: arguments[k] for k in self.record}
        return self.build(self.name, facts=facts, **self.options, **arguments)


def _add(name: str, builder: BenchmarkBuilder) -> None:
    if name in BENCHMARKS:
        raise ValueError(f"benchmark {name!r} is already registered")
    BENCHMARKS[name] = builder


def register_entry(entry: BenchmarkEntry) -> BenchmarkEntry:
    """Add ``entry`` to :data:`BENCHMARKS` under its name."""
    _add(entry.name, entry)
    return entry


def register(name: str, description: str) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Decorator adding a builder function (keyword arguments only) to :data:`BENCHMARKS`."""

    def add(fn: BenchmarkBuilder) -> BenchmarkBuilder:
        _add(name, fn)
        fn.description = description  # type: ignore[attr-defined]
        return fn

    return add


def describe_benchmarks() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every registered benchmark, in registration order."""
    return [(name, getattr(fn, "description", "")) for name, fn in BENCHMARKS.items()]


def benchmark_parameters(name: str) -> dict[str, object]:
    """The keyword arguments a named benchmark accepts, with their defaults."""
    fn = _builder(name)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()}


def _builder(name: str) -> BenchmarkBuilder:
    if name not in BENCHMARKS:
        from retain.argcheck import suggestion

        hint = suggestion(name, BENCHMARKS)
        raise DataError(f"unknown benchmark {name!r};{hint} valid names: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def is_single_pass(name: str) -> bool:
    """Whether the named benchmark is one stream seen once (:attr:`BenchmarkEntry.single_pass`),
    known without building it; False for a benchmark registered as a plain function."""
    return bool(getattr(_builder(name), "single_pass", False))


def benchmark_hints(name: str) -> dict[str, object]:
    """``{argument: annotation}`` of a named benchmark's arguments: the family builder's
    annotations, or for arguments without one (those passed on to the data source) the kind
    of the default (:func:`retain.argcheck.hint_from_default`)."""
    from retain.argcheck import hint_from_default, signature_hints

    fn = _builder(name)
    declared = signature_hints(fn.build if isinstance(fn, BenchmarkEntry) else fn)
    defaults = benchmark_parameters(name)
    return {k: declared.get(k, hint_from_default(v)) for k, v in defaults.items()}


def check_benchmark_args(
    name: str, kwargs: Mapping[str, object], where: str = "benchmark_args"
) -> None:
    """Raise DataError (one line) unless ``name`` is a registered benchmark and ``kwargs``
    are arguments it accepts, of the kinds declared (``benchmark_args.n_tasks must be an
    integer, got 'abc'``)."""
    from retain.argcheck import check_arguments, suggestion

    accepted = list(inspect.signature(_builder(name)).parameters)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        hint = suggestion(unknown[0], accepted) if len(unknown) == 1 else ""
        raise DataError(
            f"benchmark {name!r} does not accept {', '.join(unknown)};{hint} "
            f"accepted: {', '.join(accepted)}"
        )
    try:
        check_arguments(benchmark_hints(name), kwargs, where)
    except ValueError as e:
        raise DataError(str(e)) from None


def get_benchmark(name: str, **kwargs: object) -> Benchmark:
    """Build the named benchmark.

    Raises:
        DataError: unknown name (listing the valid ones), an argument the benchmark does not take
            (listing the accepted ones), or any problem with the data itself.
    """
    fn = _builder(name)
    accepted = list(inspect.signature(fn).parameters)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise DataError(
            f"benchmark {name!r} does not accept {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted)}"
        )
    bench = fn(**kwargs)
    bench.info.setdefault("benchmark", name)
    arguments = {**benchmark_parameters(name), **kwargs}
    bench.info.setdefault("arguments", {k: _plain(v) for k, v in arguments.items()})
    given = {k: _plain(v) for k, v in kwargs.items()}
    bench.built_by = {"name": name, "args": given, "n_tasks": bench.n_tasks}
    return bench


def _plain(value: object) -> object:
    """Paths as strings and sequences as lists, so ``info`` serialises as JSON."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
