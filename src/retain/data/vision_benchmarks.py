"""The papers' benchmarks on the real datasets (registered in :data:`retain.data.BENCHMARKS`).

==========================  ===============================================================
name                        papers (table)
==========================  ===============================================================
``split-mnist``             full MNIST, 5 x 2 classes
``seq-mnist``               Dynamos seq-MNIST (Table 2): 5 x 2, stacked to 3 channels
``permuted-mnist``          WSN PMNIST (Table 1), Eidetic PMNIST (Table 3): 10 permutations
``rotated-mnist``           10 rotations of full MNIST
``split-cifar10``           CIFAR-10, 5 x 2
``split-cifar100``          ScrollNet (Table 1, 5/10/20 tasks), WSN (Table 2, 10 x 10),
                            SPG C-10/C-20 (Table 2), Eidetic (Table 4, 5 tasks)
``cifar100-superclass``     WSN CIFAR-100 Superclass (Table 2): 20 tasks, one superclass each
``seq-svhn``                Dynamos seq-SVHN (Table 2): 5 x 2
``split-tinyimagenet``      ScrollNet (Table 2), WSN (Table 2, 40 x 5), SPG T-10/T-20
``omniglot-rotation``       WSN Omniglot Rotation (Table 1): 100 x 12 characters
``five-datasets``           WSN 5-Datasets (Table 1): CIFAR-10, MNIST, SVHN, notMNIST, F-MNIST
``split-imagenette``        Eidetic Imagenette (Table 5): 5 x 2 at 224 px
==========================  ===============================================================

Common arguments: ``root`` (the data root, see :mod:`retain.data.download`), ``download``
(fetch the files when missing; off by default), ``train_per_class`` / ``test_per_class`` (a
seeded class-balanced subset, :func:`~retain.data.sources.class_subset`), ``normalize``
(``true``: the dataset's published per-channel mean/std, :data:`STATS`; or ``{mean: [...],
std: [...]}``; applied once when the benchmark is built, so random-crop padding is zero in
normalised space), and for class splits ``class_order`` / ``shuffle_classes`` / ``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from retain.data.augment import normalize as normalize_batch
from retain.data.benchmark import Benchmark, DataError
from retain.data.benchmarks import register
from retain.data.custom import benchmark_from_task_tensors
from retain.data.lazy_images import TransformedImages
from retain.data.lazy_tasks import lazy_split
from retain.data.scenarios import permuted, rotated, split
from retain.data.sources import RawData, class_subset, load_fashion_mnist
from retain.data.vision_sources import (
    STATS,
    load_cifar10,
    load_cifar100,
    load_imagenette,
    load_mnist,
    load_notmnist,
    load_omniglot,
    load_svhn,
    load_tinyimagenet,
    superclass_groups,
)

Root = str | os.PathLike | None
Normalize = bool | dict[str, Any]


def _subset(data: RawData, train_per_class: int | None, test_per_class: int | None) -> RawData:
    return class_subset(data, train_per_class, test_per_class, seed=0)


def _stats(spec: Normalize, dataset: str, x: torch.Tensor | None = None):
    """``(mean, std)`` for ``normalize=spec`` or None: the published statistics of ``dataset``,
    an explicit ``{mean, std}``, or (for datasets without published ones) those of ``x``."""
    if spec is False or spec is None:
        return None
    if isinstance(spec, dict):
        if set(spec) != {"mean", "std"}:
            raise DataError(
                f"normalize must be true, false or {{mean: [...], std: [...]}}, got {spec}"
            )
        return spec["mean"], spec["std"]
    if spec is not True:
        raise DataError(
            f"normalize must be true, false or {{mean: [...], std: [...]}}, got {spec!r}"
        )
    if dataset in STATS:
        return STATS[dataset]
    assert x is not None
    xf = x.float() / 255.0
    dims = [0, *range(2, xf.ndim)]
    return xf.mean(dims).tolist(), xf.std(dims).clamp_min(1e-6).tolist()


def _normalize(bench: Benchmark, stats, tasks: Sequence[int] | None = None) -> Benchmark:
    if stats is None:
        return bench
    mean, std = stats

    def norm(x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, TransformedImages):  # stays lazy: normalised as rows are read
            return x.then(lambda b: normalize_batch(b, mean, std))
        return normalize_batch(x, mean, std)

    for t in bench.tasks if tasks is None else [bench.tasks[i] for i in tasks]:
        t.x_train, t.x_test = norm(t.x_train), norm(t.x_test)
    bench.info.setdefault("normalize", {"mean": list(mean), "std": list(std)})
    return bench


def _info(bench: Benchmark, source: str, **facts: Any) -> Benchmark:
    bench.info = {"source": source, **facts, **bench.info}
    return bench


def _split_bench(
    data: RawData,
    name: str,
    source: str,
    n_tasks: int | None,
    *,
    seed: int,
    class_order: Sequence[int] | None,
    shuffle_classes: bool,
    normalize: Normalize,
    lazy: bool = False,
    sizes: Sequence[int] | None = None,
    **facts: Any,
) -> Benchmark:
    stats = _stats(normalize, source, data.x_train)
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
        _normalize(bench, stats)
    return _info(bench, source, **facts)


def _gray_to_rgb32(data: RawData) -> RawData:
    """28x28 grayscale to 3x32x32: zero-pad 2 pixels and repeat the channel (the GPM/WSN
    5-Datasets preprocessing)."""

    def conv(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] == (3, 32, 32):
            return x
        return F.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()

    return RawData(conv(data.x_train), data.y_train, conv(data.x_test), data.y_test)


def _channels(data: RawData, channels: int) -> RawData:
    if channels == 1:
        return data
    if channels != 3:
        raise DataError(f"channels must be 1 or 3, got {channels}")
    rep = [t.expand(-1, 3, -1, -1).contiguous() for t in (data.x_train, data.x_test)]
    return RawData(rep[0], data.y_train, rep[1], data.y_test)


# --------------------------------------------------------------------------- MNIST


def _mnist_split(name: str, channels: int, **kw: Any) -> Benchmark:
    data = _channels(
        _subset(load_mnist(kw.pop("root"), kw.pop("download")), kw.pop("tpc"), kw.pop("spc")),
        channels,
    )
    return _split_bench(data, name, "mnist", channels=channels, **kw)


@register("split-mnist", "MNIST (60000/10000 images, needs the files), 5 tasks x 2 classes")
def split_mnist(
    *,
    n_tasks: int = 5,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    normalize: Normalize = False,
    channels: int = 1,
) -> Benchmark:
    return _mnist_split(
        "split-mnist", channels, root=root, download=download, tpc=train_per_class,
        spc=test_per_class, n_tasks=n_tasks, seed=seed, class_order=class_order,
        shuffle_classes=shuffle_classes, normalize=normalize,
    )  # fmt: skip


@register(
    "seq-mnist",
    "Dynamos seq-MNIST (Table 2): MNIST 5 x 2, stacked to 3 channels, class-incremental",
)
def seq_mnist(
    *,
    n_tasks: int = 5,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    channels: int = 3,
) -> Benchmark:
    return _mnist_split(
        "seq-mnist", channels, root=root, download=download, tpc=train_per_class,
        spc=test_per_class, n_tasks=n_tasks, seed=seed, class_order=None,
        shuffle_classes=False, normalize=False,
    )  # fmt: skip


@register(
    "permuted-mnist", "MNIST, 10 tasks of all 10 classes, one pixel permutation each (PMNIST)"
)
def permuted_mnist(
    *,
    n_tasks: int = 10,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    identity_first: bool = False,
    normalize: Normalize = False,
    lazy: bool = False,
) -> Benchmark:
    """``lazy=True`` permutes the rows each batch reads instead of holding a permuted float32
    copy per task (2.2 GB for 10 tasks); the values are the same."""
    data = _subset(load_mnist(root, download), train_per_class, test_per_class)
    bench = permuted(
        data, n_tasks, seed=seed, identity_first=identity_first, name="permuted-mnist", lazy=lazy
    )
    return _info(_normalize(bench, _stats(normalize, "mnist")), "mnist")


@register("rotated-mnist", "MNIST, 10 tasks of all 10 classes, rotated 0..162 degrees")
def rotated_mnist(
    *,
    n_tasks: int = 10,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    angles: Sequence[float] | str | None = None,
    lazy: bool = False,
) -> Benchmark:
    """``lazy=True`` rotates the rows each batch reads instead of holding a rotated float32
    copy per task; the values are the same."""
    data = _subset(load_mnist(root, download), train_per_class, test_per_class)
    bench = rotated(data, n_tasks, angles=angles, seed=seed, name="rotated-mnist", lazy=lazy)
    return _info(bench, "mnist")


# --------------------------------------------------------------------------- CIFAR


@register("split-cifar10", "CIFAR-10 (50000/10000 images, needs the files), 5 tasks x 2 classes")
def split_cifar10(
    *,
    n_tasks: int = 5,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    normalize: Normalize = False,
) -> Benchmark:
    data = _subset(load_cifar10(root, download), train_per_class, test_per_class)
    return _split_bench(
        data, "split-cifar10", "cifar10", n_tasks, seed=seed, class_order=class_order,
        shuffle_classes=shuffle_classes, normalize=normalize,
    )  # fmt: skip


@register(
    "split-cifar100",
    "CIFAR-100 (needs the files), 10 tasks x 10 classes (n_tasks 5/10/20: ScrollNet, WSN, SPG)",
)
def split_cifar100(
    *,
    n_tasks: int = 10,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    normalize: Normalize = False,
) -> Benchmark:
    data = _subset(load_cifar100(root, download).data, train_per_class, test_per_class)
    return _split_bench(
        data, "split-cifar100", "cifar100", n_tasks, seed=seed, class_order=class_order,
        shuffle_classes=shuffle_classes, normalize=normalize,
    )  # fmt: skip


@register(
    "cifar100-superclass",
    "CIFAR-100 Superclass (WSN Table 2): 20 tasks, the 5 fine classes of one superclass each",
)
def cifar100_superclass(
    *,
    n_tasks: int = 20,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    shuffle_tasks: bool = False,
    normalize: Normalize = False,
) -> Benchmark:
    """Task ``k`` holds the fine classes of superclass ``k`` (sorted); ``shuffle_tasks`` orders
    the superclasses by a permutation drawn with ``seed``."""
    c = load_cifar100(root, download)
    groups = superclass_groups(
        torch.cat([c.data.y_train, c.data.y_test]), torch.cat([c.coarse_train, c.coarse_test])
    )
    if n_tasks != len(groups):
        raise DataError(f"cifar100-superclass has {len(groups)} superclasses, n_tasks={n_tasks}")
    if shuffle_tasks:
        g = torch.Generator().manual_seed(int(seed))
        groups = [groups[i] for i in torch.randperm(len(groups), generator=g).tolist()]
    data = _subset(c.data, train_per_class, test_per_class)
    order = [f for group in groups for f in group]
    bench = _split_bench(
        data, "cifar100-superclass", "cifar100", None, seed=seed, class_order=order,
        shuffle_classes=False, normalize=normalize, sizes=[len(g) for g in groups],
        superclasses=groups,
    )  # fmt: skip
    return bench


# --------------------------------------------------------------------------- SVHN


@register("seq-svhn", "Dynamos seq-SVHN (Table 2): SVHN (needs the .mat files), 5 x 2 classes")
def seq_svhn(
    *,
    n_tasks: int = 5,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    normalize: Normalize = False,
) -> Benchmark:
    data = _subset(load_svhn(root, download), train_per_class, test_per_class)
    return _split_bench(
        data, "seq-svhn", "svhn", n_tasks, seed=seed, class_order=class_order,
        shuffle_classes=shuffle_classes, normalize=normalize,
    )  # fmt: skip


# --------------------------------------------------------------------------- TinyImageNet


@register(
    "split-tinyimagenet",
    "TinyImageNet (200 classes, needs the folder), 10 tasks (WSN: 40, SPG: 10/20, ScrollNet: 5-20)",
)
def split_tinyimagenet(
    *,
    n_tasks: int = 10,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    size: int = 64,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    normalize: Normalize = False,
    lazy: bool = False,
) -> Benchmark:
    """``lazy=True`` keeps the uint8 images memory-mapped and converts batches as they are
    drawn (see :mod:`retain.data.lazy_tasks`) instead of holding 5 GB of float32 images."""
    data = load_tinyimagenet(root, download, size=size, lazy=lazy)
    data = _subset(data, train_per_class, test_per_class)
    return _split_bench(
        data, "split-tinyimagenet", "tinyimagenet", n_tasks, seed=seed, class_order=class_order,
        shuffle_classes=shuffle_classes, normalize=normalize, lazy=lazy, size=size,
    )  # fmt: skip


@register(
    "split-imagenette",
    "Imagenette (10 classes at 224 px, needs the folder; memory-mapped), 5 tasks x 2 (Eidetic)",
)
def split_imagenette(
    *,
    n_tasks: int = 5,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    size: int = 224,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    normalize: Normalize = False,
    lazy: bool = True,
) -> Benchmark:
    data = load_imagenette(root, download, size=size, lazy=lazy)
    data = _subset(data, train_per_class, test_per_class)
    return _split_bench(
        data, "split-imagenette", "imagenette", n_tasks, seed=seed, class_order=class_order,
        shuffle_classes=shuffle_classes, normalize=normalize, lazy=lazy, size=size,
    )  # fmt: skip


# --------------------------------------------------------------------------- Omniglot


@register(
    "omniglot-rotation",
    "WSN Omniglot Rotation (Table 1): 1200 characters, each drawing also at 90/180/270 deg,"
    " 100 tasks x 12",
)
def omniglot_rotation(
    *,
    n_tasks: int = 100,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    n_classes: int = 1200,
    size: int = 32,
    rotations: Sequence[int] = (0, 90, 180, 270),
    test_per_class: int = 4,
    shuffle_classes: bool = False,
    normalize: Normalize = False,
) -> Benchmark:
    """The first ``n_classes`` characters (sorted by set, alphabet, character); every drawing
    is added rotated by each of ``rotations`` (multiples of 90: exact, no interpolation) as more
    samples of its own character; ``test_per_class`` drawings per character are held out."""
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
    return _split_bench(
        data, "omniglot-rotation", "omniglot", n_tasks, seed=seed, class_order=None,
        shuffle_classes=shuffle_classes, normalize=normalize, rotations=list(rotations),
        characters=names[:n_classes][:20],
    )  # fmt: skip


# --------------------------------------------------------------------------- 5-Datasets

FIVE_DATASETS = ("cifar10", "mnist", "svhn", "notmnist", "fashion-mnist")


@register(
    "five-datasets",
    "5-Datasets (WSN Table 1): CIFAR-10, MNIST, SVHN, notMNIST, Fashion-MNIST at 3x32x32,"
    " one task of 10 classes each",
)
def five_datasets(
    *,
    n_tasks: int = 5,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    fashion_root: Root = None,
    order: Sequence[str] = FIVE_DATASETS,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    normalize: Normalize = False,
) -> Benchmark:
    """One task per dataset in ``order``; 28x28 grayscale sets are zero-padded to 32 and
    repeated to 3 channels; with ``normalize`` each task gets its own dataset's statistics.
    ``fashion_root`` is where Fashion-MNIST is (default: ``$RETAIN_FASHION_MNIST`` or
    ``/usr/share/datasets/fashion-mnist``)."""
    order = list(order)
    unknown = [o for o in order if o not in FIVE_DATASETS]
    if unknown or len(set(order)) != len(order):
        raise DataError(f"order must name each of {', '.join(FIVE_DATASETS)} at most once")
    if n_tasks != len(order):
        raise DataError(f"five-datasets has {len(order)} tasks in order, n_tasks={n_tasks}")
    loaders = {
        "cifar10": lambda: load_cifar10(root, download),
        "mnist": lambda: load_mnist(root, download),
        "svhn": lambda: load_svhn(root, download),
        "notmnist": lambda: load_notmnist(root, download),
        "fashion-mnist": lambda: load_fashion_mnist(fashion_root),
    }
    parts = [_gray_to_rgb32(_subset(loaders[o](), train_per_class, test_per_class)) for o in order]
    bench = benchmark_from_task_tensors(
        [tuple(p) for p in parts], classes=[list(range(10))] * len(parts), names=order,
        name="five-datasets",
    )  # fmt: skip
    for i, (o, p) in enumerate(zip(order, parts)):
        _normalize(bench, _stats(normalize, o, p.x_train), tasks=[i])
    bench.info.pop("normalize", None)
    return _info(bench, "five-datasets", order=order, normalize=bool(normalize))


@register(
    "mnist360",
    "Dynamos MNIST-360 (Table 1): full MNIST digits 0-8 as a boundary-free stream of overlapping"
    " pairs with drifting rotation, one pass",
)
def mnist360(
    *,
    n_tasks: int = 1,
    seed: int = 0,
    root: Root = None,
    download: bool = False,
    rounds: int = 3,
    n_classes: int = 9,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> Benchmark:
    """General continual learning on full MNIST (see :func:`retain.data.stream.rotating_pairs`,
    and ``mnist360-5k`` for the offline MNIST-5k version)."""
    from retain.data.stream import rotating_pairs

    if n_tasks != 1:
        raise DataError(f"mnist360 is one boundary-free stream: n_tasks must be 1, got {n_tasks}")
    data = _subset(load_mnist(root, download), train_per_class, test_per_class)
    bench = rotating_pairs(data, n_classes=n_classes, rounds=rounds, seed=seed, name="mnist360")
    return _info(bench, "mnist")
