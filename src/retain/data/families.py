"""The benchmark families: one builder each, shared by every registered benchmark of the family.

======================  ==================================================================
builder                 benchmarks (see :mod:`retain.data.catalog`)
======================  ==================================================================
:func:`class_split`     disjoint groups of a dataset's classes: ``split-*``, ``seq-*``
:func:`permutations`    all classes, one pixel permutation per task: ``permuted-*``
:func:`rotations`       all classes, one rotation per task: ``rotated-*``
:func:`rotating_stream` one boundary-free stream of rotating digit pairs: ``mnist360*``
:func:`superclass_split`  one CIFAR-100 superclass per task: ``cifar100-superclass``
:func:`rotated_copies_split`  classes split after adding rotated copies: ``omniglot-rotation``
:func:`dataset_sequence`  one task per dataset: ``five-datasets``
======================  ==================================================================

Every builder is called by a :class:`~retain.data.benchmarks.BenchmarkEntry` as
``build(name, facts=..., **options, **arguments)``: ``name`` is the benchmark's, ``facts`` go
into ``info`` right after ``source``, ``dataset`` names an entry of
:data:`~retain.data.datasets.DATASETS`, and the arguments a builder does not name itself
(``root``, ``download``, ``size``, ``split_seed``, ``train_per_class``, ...) are the dataset's
reading arguments (:meth:`~retain.data.datasets.Dataset.read`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from retain.data.benchmark import Benchmark, DataError
from retain.data.custom import benchmark_from_task_tensors
from retain.data.datasets import DATASETS
from retain.data.lazy_tasks import lazy_split
from retain.data.normalization import Normalize, normalize_tasks, resolve_stats
from retain.data.scenarios import permuted, rotated, split
from retain.data.sources import RawData, class_subset
from retain.data.stream import rotating_pairs
from retain.data.vision_sources import load_cifar100, load_omniglot, superclass_groups

Facts = Mapping[str, Any]


def with_source(bench: Benchmark, source: str, facts: Facts) -> Benchmark:
    """``bench`` with ``info`` starting ``source``, then ``facts``, then what it already had."""
    bench.info = {"source": source, **facts, **bench.info}
    return bench


def split_classes(
    data: RawData,
    name: str,
    source: str,
    n_tasks: int | None,
    *,
    seed: int,
    class_order: Sequence[int] | None,
    shuffle_classes: bool,
    normalize: Normalize,
    facts: Facts,
    lazy: bool = False,
    sizes: Sequence[int] | None = None,
) -> Benchmark:
    """Split ``data`` into tasks of disjoint classes (:func:`~retain.data.scenarios.split`, or
    :func:`~retain.data.lazy_tasks.lazy_split` when ``lazy``), normalised as asked."""
    stats = resolve_stats(normalize, source, data.x_train)
    if lazy:
        bench = lazy_split(
            data,
            n_tasks,
            class_order=class_order,
            shuffle_classes=shuffle_classes,
            seed=seed,
            name=name,
            stats=stats,
        )
        if stats is not None:
            bench.info["normalize"] = {"mean": list(stats[0]), "std": list(stats[1])}
    else:
        bench = split(
            data,
            n_tasks,
            class_order=class_order,
            shuffle_classes=shuffle_classes,
            seed=seed,
            sizes=sizes,
            name=name,
        )
        normalize_tasks(bench, stats)
    return with_source(bench, source, facts)


def _channels(data: RawData, channels: int) -> RawData:
    """Grayscale images as they are (``channels=1``) or repeated to 3 channels."""
    if channels == 1:
        return data
    if channels != 3:
        raise DataError(f"channels must be 1 or 3, got {channels}")
    rep = [t.expand(-1, 3, -1, -1).contiguous() for t in (data.x_train, data.x_test)]
    return RawData(rep[0], data.y_train, rep[1], data.y_test)


def class_split(
    name: str,
    *,
    facts: Facts,
    dataset: str,
    n_tasks: int,
    seed: int,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    normalize: Normalize = False,
    lazy: bool = False,
    channels: int = 1,
    **reading: Any,
) -> Benchmark:
    """Tasks of disjoint classes of ``dataset`` (class-incremental). ``lazy`` also reads the
    dataset memory-mapped where its loader can; ``channels=3`` repeats grayscale images."""
    source = DATASETS[dataset]
    data = _channels(source.read(lazy=lazy, **reading), channels)
    return split_classes(
        data,
        name,
        source.name,
        n_tasks,
        seed=seed,
        class_order=class_order,
        shuffle_classes=shuffle_classes,
        normalize=normalize,
        facts=facts,
        lazy=lazy,
    )


def permutations(
    name: str,
    *,
    facts: Facts,
    dataset: str,
    n_tasks: int,
    seed: int,
    identity_first: bool = False,
    normalize: Normalize = False,
    lazy: bool = False,
    **reading: Any,
) -> Benchmark:
    """Every class of ``dataset`` in every task, each task with its own pixel permutation
    (:func:`~retain.data.scenarios.permuted`; ``lazy`` permutes rows as batches read them)."""
    source = DATASETS[dataset]
    data = source.read(**reading)
    bench = permuted(data, n_tasks, seed=seed, identity_first=identity_first, name=name, lazy=lazy)
    normalize_tasks(bench, resolve_stats(normalize, source.name, data.x_train))
    return with_source(bench, source.name, facts)


def rotations(
    name: str,
    *,
    facts: Facts,
    dataset: str,
    n_tasks: int,
    seed: int,
    angles: Sequence[float] | str | None = None,
    normalize: Normalize = False,
    lazy: bool = False,
    **reading: Any,
) -> Benchmark:
    """Every class of ``dataset`` in every task, each task rotated by its own angle
    (:func:`~retain.data.scenarios.rotated`; ``lazy`` rotates rows as batches read them)."""
    source = DATASETS[dataset]
    data = source.read(**reading)
    bench = rotated(data, n_tasks, angles=angles, seed=seed, name=name, lazy=lazy)
    normalize_tasks(bench, resolve_stats(normalize, source.name, data.x_train))
    return with_source(bench, source.name, facts)


def rotating_stream(
    name: str,
    *,
    facts: Facts,
    dataset: str,
    n_tasks: int,
    seed: int,
    rounds: int = 3,
    n_classes: int = 9,
    **reading: Any,
) -> Benchmark:
    """General continual learning: one boundary-free stream of overlapping class pairs with a
    drifting rotation, seen once (:func:`~retain.data.stream.rotating_pairs`)."""
    if n_tasks != 1:
        raise DataError(f"{name} is one boundary-free stream: n_tasks must be 1, got {n_tasks}")
    source = DATASETS[dataset]
    bench = rotating_pairs(
        source.read(**reading), n_classes=n_classes, rounds=rounds, seed=seed, name=name
    )
    return with_source(bench, source.name, facts)


def superclass_split(
    name: str,
    *,
    facts: Facts,
    n_tasks: int,
    seed: int,
    root: Any,
    download: bool,
    train_per_class: int | None,
    test_per_class: int | None,
    shuffle_tasks: bool,
    normalize: Normalize,
) -> Benchmark:
    """Task ``k`` holds the fine CIFAR-100 classes of superclass ``k`` (sorted);
    ``shuffle_tasks`` orders the superclasses by a permutation drawn with ``seed``."""
    c = load_cifar100(root, download)
    groups = superclass_groups(
        torch.cat([c.data.y_train, c.data.y_test]), torch.cat([c.coarse_train, c.coarse_test])
    )
    if n_tasks != len(groups):
        raise DataError(f"{name} has {len(groups)} superclasses, n_tasks={n_tasks}")
    if shuffle_tasks:
        g = torch.Generator().manual_seed(int(seed))
        groups = [groups[i] for i in torch.randperm(len(groups), generator=g).tolist()]
    data = class_subset(c.data, train_per_class, test_per_class, seed=0)
    order = [f for group in groups for f in group]
    return split_classes(
        data,
        name,
        "cifar100",
        None,
        seed=seed,
        class_order=order,
        shuffle_classes=False,
        normalize=normalize,
        sizes=[len(g) for g in groups],
        facts={**facts, "superclasses": groups},
    )


def rotated_copies_split(
    name: str,
    *,
    facts: Facts,
    n_tasks: int,
    seed: int,
    root: Any,
    download: bool,
    n_classes: int,
    size: int,
    rotations: Sequence[int],
    test_per_class: int,
    shuffle_classes: bool,
    normalize: Normalize,
) -> Benchmark:
    """The first ``n_classes`` Omniglot characters (sorted by set, alphabet, character); every
    drawing is added rotated by each of ``rotations`` (multiples of 90: exact, no
    interpolation) as more samples of its own character; ``test_per_class`` drawings per
    character are held out."""
    data, names = load_omniglot(root, download, size=size, test_per_class=test_per_class)
    if not 0 < n_classes <= len(names):
        raise DataError(f"n_classes must be 1..{len(names)} (characters found), got {n_classes}")
    bad = [r for r in rotations if r % 90]
    if bad or not rotations:
        raise DataError(f"rotations must be multiples of 90 degrees, got {list(rotations)}")

    def keep_and_rotate(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = y < n_classes
        x, y = x[m], y[m]
        xs = [torch.rot90(x, (r // 90) % 4, dims=(-2, -1)) for r in rotations]
        return torch.cat(xs), y.repeat(len(rotations))

    data = RawData(
        *keep_and_rotate(data.x_train, data.y_train), *keep_and_rotate(data.x_test, data.y_test)
    )
    return split_classes(
        data,
        name,
        "omniglot",
        n_tasks,
        seed=seed,
        class_order=None,
        shuffle_classes=shuffle_classes,
        normalize=normalize,
        facts={**facts, "rotations": list(rotations), "characters": names[:n_classes][:20]},
    )


def _gray_to_rgb32(data: RawData) -> RawData:
    """28x28 grayscale to 3x32x32: zero-pad 2 pixels and repeat the channel (the GPM/WSN
    5-Datasets preprocessing)."""

    def conv(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] == (3, 32, 32):
            return x
        return F.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()

    return RawData(conv(data.x_train), data.y_train, conv(data.x_test), data.y_test)


def dataset_sequence(
    name: str,
    *,
    facts: Facts,
    choices: Sequence[str],
    n_tasks: int,
    seed: int,
    root: Any,
    download: bool,
    fashion_root: Any,
    order: Sequence[str],
    train_per_class: int | None,
    test_per_class: int | None,
    normalize: Normalize,
) -> Benchmark:
    """One task of 10 classes per dataset in ``order`` (each of ``choices`` at most once), at
    3x32x32: 28x28 grayscale sets are zero-padded to 32 and repeated to 3 channels; with
    ``normalize`` each task gets its own dataset's statistics. Fashion-MNIST is read from
    ``fashion_root`` (default: ``$RETAIN_FASHION_MNIST`` or
    ``/usr/share/datasets/fashion-mnist``), the others from ``root``."""
    order = list(order)
    unknown = [o for o in order if o not in choices]
    if unknown or len(set(order)) != len(order):
        raise DataError(f"order must name each of {', '.join(choices)} at most once")
    if n_tasks != len(order):
        raise DataError(f"{name} has {len(order)} tasks in order, n_tasks={n_tasks}")
    subset = {"train_per_class": train_per_class, "test_per_class": test_per_class}
    roots = {"fashion-mnist": fashion_root}
    parts = [
        _gray_to_rgb32(DATASETS[o].read(root=roots.get(o, root), download=download, **subset))
        for o in order
    ]
    bench = benchmark_from_task_tensors(
        [tuple(p) for p in parts], classes=[list(range(10))] * len(parts), names=order, name=name
    )
    for i, (o, p) in enumerate(zip(order, parts)):
        normalize_tasks(bench, resolve_stats(normalize, o, p.x_train), tasks=[i])
    bench.info.pop("normalize", None)
    return with_source(bench, name, {**facts, "order": order, "normalize": bool(normalize)})
