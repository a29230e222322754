"""Scenarios: turn one dataset ``(x_train, y_train, x_test, y_test)`` into a :class:`Benchmark`.

* :func:`split` - class-incremental / task-incremental: the classes are cut into groups, one
  task per group.
* :func:`permuted` - domain-incremental: every task sees all classes with its own fixed pixel
  permutation.
* :func:`rotated` - domain-incremental: every task sees all classes rotated by its own angle.

Inputs may be tensors or numpy arrays; uint8 pixels become float32 in [0, 1], float inputs are
kept as they are. Labels are the dataset's class ids (any integers); tasks get local labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from retain.data.benchmark import Benchmark, DataError, Task
from retain.data.convert import as_inputs, as_labels, local_labels
from retain.data.lazy_images import TransformedImages

#: Anything unpackable as ``(x_train, y_train, x_test, y_test)``, e.g. a ``RawData``.
Data = Sequence[Any]


def _prepare(data: Data) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if len(data) != 4:
        raise DataError(f"expected (x_train, y_train, x_test, y_test), got {len(data)} items")
    x_train, y_train, x_test, y_test = data
    xtr, xte = as_inputs(x_train, "x_train"), as_inputs(x_test, "x_test")
    ytr, yte = as_labels(y_train, "y_train"), as_labels(y_test, "y_test")
    if len(xtr) != len(ytr):
        raise DataError(f"x_train has {len(xtr)} samples but y_train {len(ytr)} labels")
    if len(xte) != len(yte):
        raise DataError(f"x_test has {len(xte)} samples but y_test {len(yte)} labels")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(
            f"train samples have shape {tuple(xtr.shape[1:])} but test samples "
            f"{tuple(xte.shape[1:])}"
        )
    return xtr, ytr, xte, yte


def _all_classes(*ys: Tensor) -> list[int]:
    return torch.cat(ys).unique(sorted=True).tolist()


def _class_name(classes: Sequence[int]) -> str:
    return "classes " + ",".join(str(c) for c in classes)


# --------------------------------------------------------------------------- split


def group_classes(
    order: Sequence[int], n_tasks: int | None = None, sizes: Sequence[int] | None = None
) -> list[list[int]]:
    """Cut ``order`` into consecutive groups: ``n_tasks`` equal groups, or groups of ``sizes``.

    Raises:
        DataError: the classes do not divide evenly (and no ``sizes``), or ``sizes`` do not add
            up to the number of classes or disagree with ``n_tasks``.
    """
    order = list(order)
    if sizes is not None:
        sizes = [int(s) for s in sizes]
        if n_tasks is not None and len(sizes) != n_tasks:
            raise DataError(f"{len(sizes)} task sizes given for n_tasks={n_tasks}")
        if any(s <= 0 for s in sizes):
            raise DataError(f"task sizes must be positive, got {sizes}")
        if sum(sizes) != len(order):
            raise DataError(f"task sizes {sizes} add up to {sum(sizes)}, not {len(order)} classes")
    else:
        if n_tasks is None or n_tasks <= 0:
            raise DataError(f"n_tasks must be a positive integer, got {n_tasks}")
        if len(order) % n_tasks:
            raise DataError(
                f"{len(order)} classes do not split evenly into {n_tasks} tasks; "
                f"pass sizes= (classes per task) or another n_tasks"
            )
        sizes = [len(order) // n_tasks] * n_tasks
    groups, start = [], 0
    for s in sizes:
        groups.append(order[start : start + s])
        start += s
    return groups


def _select(x: Tensor, y: Tensor, group: list[int]) -> tuple[Tensor, Tensor]:
    mask = torch.isin(y, torch.tensor(group, dtype=torch.int64))
    return x[mask], local_labels(y[mask], group)


def tasks_from_groups(
    xtr: Tensor, ytr: Tensor, xte: Tensor, yte: Tensor, groups: list[list[int]]
) -> list[Task]:
    """One task per class group, with local labels in group order and consecutive offsets."""
    tasks, offset = [], 0
    for i, group in enumerate(groups):
        a, b = _select(xtr, ytr, group)
        c, d = _select(xte, yte, group)
        tasks.append(Task(i, a, b, c, d, list(group), offset, _class_name(group)))
        offset += len(group)
    return tasks


def split(
    data: Data,
    n_tasks: int | None = None,
    *,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    seed: int | None = 0,
    sizes: Sequence[int] | None = None,
    name: str = "split",
) -> Benchmark:
    """Split the classes into consecutive groups, one task per group.

    The class order is ``class_order`` if given (it may name a subset of the classes, which
    drops the others); else the natural order (sorted class ids) - or, with
    ``shuffle_classes=True``, a permutation of it drawn with ``seed``. Local label ``k`` of a
    task is the ``k``-th class of its group; ``Task.classes`` holds the original class ids.

    Args:
        data: ``(x_train, y_train, x_test, y_test)``.
        n_tasks: number of equal groups; the classes must divide evenly unless ``sizes`` is given.
        class_order: explicit order of (original) class ids.
        shuffle_classes: shuffle the natural order with ``seed`` (ignored with ``class_order``).
        seed: seed of that shuffle.
        sizes: classes per task, e.g. ``[5, 1, 1, 1, 1, 1]``; overrides the equal split.
        name: the benchmark's name.

    The order, the sizes and the seed are recorded in ``Benchmark.info``.
    """
    xtr, ytr, xte, yte = _prepare(data)
    present = _all_classes(ytr, yte)
    if class_order is not None:
        order = [int(c) for c in class_order]
        if len(set(order)) != len(order):
            dup = sorted({c for c in order if order.count(c) > 1})
            raise DataError(f"class_order names classes {dup} more than once")
        absent = sorted(set(order) - set(present))
        if absent:
            raise DataError(f"class_order names classes {absent} that are not in the data")
        how = "given"
    elif shuffle_classes:
        if seed is None:
            raise DataError("shuffle_classes=True needs a seed")
        g = torch.Generator().manual_seed(int(seed))
        order = [present[i] for i in torch.randperm(len(present), generator=g).tolist()]
        how = "shuffled"
    else:
        order = present
        how = "natural"
    groups = group_classes(order, n_tasks, sizes)
    tasks = tasks_from_groups(xtr, ytr, xte, yte, groups)
    info = {
        "scenario": "split",
        "class_order": order,
        "class_order_from": how,
        "classes_per_task": [len(g) for g in groups],
        "seed": seed,
    }
    return Benchmark(name, tasks, tuple(xtr.shape[1:]), info)


# --------------------------------------------------------------------------- shared-class tasks


def _shared_class_tasks(
    xtr: Tensor,
    ytr: Tensor,
    xte: Tensor,
    yte: Tensor,
    transforms: list,
    names: list[str],
    lazy: bool = False,
) -> list[Task]:
    """Tasks that all hold every class, each with inputs ``transform(x)``; offsets ``C * t``.
    With ``lazy`` the transform is applied to the rows each batch reads
    (:class:`~retain.data.lazy_tasks.TransformedImages`): one shared copy of the images
    instead of one per task, the same values."""

    def apply(transform, x: Tensor) -> Tensor:
        return TransformedImages(x, transform) if lazy else transform(x)

    classes = _all_classes(ytr, yte)
    ltr, lte = local_labels(ytr, classes), local_labels(yte, classes)
    tasks = []
    for t, (transform, task_name) in enumerate(zip(transforms, names)):
        tasks.append(
            Task(
                t,
                apply(transform, xtr),
                ltr.clone(),
                apply(transform, xte),
                lte.clone(),
                list(classes),
                len(classes) * t,
                task_name,
            )
        )
    return tasks


# --------------------------------------------------------------------------- permuted


def make_permutations(
    n_tasks: int, n_features: int, seed: int = 0, identity_first: bool = False
) -> list[Tensor]:
    """The pixel permutations of :func:`permuted`: task ``t`` gets the ``t``-th draw of
    ``torch.randperm`` from a generator seeded with ``seed``. With ``identity_first`` task 0 is
    the identity instead (its draw is still made, so tasks 1.. are the same either way)."""
    if n_tasks <= 0:
        raise DataError(f"n_tasks must be a positive integer, got {n_tasks}")
    g = torch.Generator().manual_seed(int(seed))
    perms = [torch.randperm(n_features, generator=g) for _ in range(n_tasks)]
    if identity_first:
        perms[0] = torch.arange(n_features)
    return perms


def permute_pixels(x: Tensor, perm: Tensor) -> Tensor:
    """Reorder the flattened features of every sample by ``perm``, keeping the sample shape."""
    return x.reshape(len(x), -1)[:, perm].reshape(x.shape)


def permuted(
    data: Data,
    n_tasks: int = 10,
    *,
    seed: int = 0,
    identity_first: bool = False,
    name: str = "permuted",
    lazy: bool = False,
) -> Benchmark:
    """Permuted-MNIST-style tasks: the same classes, a fixed random pixel permutation per task.

    By default every task is permuted (as in the WSN and GPM papers); ``identity_first=True``
    leaves task 0 unpermuted (the original images). The permutation acts on all features of a
    sample flattened (channels included), applied identically to train and test, and the sample
    shape is kept. All tasks share the classes; task ``t`` has class offset ``C * t``.
    See :func:`make_permutations` for how the permutations follow from ``seed``. ``lazy``
    permutes the rows a batch reads instead of storing a permuted copy per task.
    """
    xtr, ytr, xte, yte = _prepare(data)
    n_features = math.prod(xtr.shape[1:])
    perms = make_permutations(n_tasks, n_features, seed, identity_first)
    transforms = [lambda x, p=p: permute_pixels(x, p) for p in perms]
    names = [
        "identity" if (identity_first and t == 0) else f"permutation {t}" for t in range(n_tasks)
    ]
    tasks = _shared_class_tasks(xtr, ytr, xte, yte, transforms, names, lazy)
    info = {
        "scenario": "permuted",
        "lazy": lazy,
        "seed": seed,
        "identity_first": identity_first,
        "permuted_tasks": [t for t in range(n_tasks) if not (identity_first and t == 0)],
        "permutations": "torch.randperm(n_features) per task from Generator().manual_seed(seed)",
    }
    return Benchmark(name, tasks, tuple(xtr.shape[1:]), info)


# --------------------------------------------------------------------------- rotated


def rotate_images(x: Tensor, degrees: float | Tensor, chunk: int = 8192) -> Tensor:
    """Rotate a batch ``(N, C, H, W)`` (or ``(N, H, W)``) about the image centre by ``degrees``
    counter-clockwise as displayed (row 0 at the top), like ``torch.rot90(x, 1, (-2, -1))`` for
    90. Bilinear interpolation; pixels from outside the image are zero. Float inputs only.
    ``degrees`` is one angle for all images or a tensor of ``N`` angles, one per image.
    """
    if not torch.is_floating_point(x):
        raise DataError(f"rotate_images needs float inputs, got {x.dtype}")
    squeeze = x.ndim == 3
    if squeeze:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise DataError(f"rotate_images needs (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    per_image = isinstance(degrees, Tensor)
    if per_image and degrees.shape != (n,):
        raise DataError(f"rotate_images got {tuple(degrees.shape)} angles for {n} images")
    angles = degrees if per_image else torch.tensor([float(degrees)])
    rad = torch.deg2rad(angles.to(torch.float64))
    cos, sin = torch.cos(rad), torch.sin(rad)
    # affine_grid works in coordinates normalised to [-1, 1] per axis; rescale so the rotation
    # is a true rotation in pixel space for non-square images too. Output pixel (u, v) samples
    # the input at R(angle) (u, v), which turns the picture counter-clockwise.
    zero = torch.zeros_like(cos)
    theta = torch.stack(
        [torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1
    ).to(x.dtype)
    out = torch.empty_like(x)
    for start in range(0, n, chunk):
        part = x[start : start + chunk]
        th = theta[start : start + chunk] if per_image else theta.expand(len(part), 2, 3)
        grid = F.affine_grid(th, [len(part), c, h, w], align_corners=False)
        out[start : start + chunk] = F.grid_sample(
            part, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
    return out.squeeze(1) if squeeze else out


def default_angles(n_tasks: int) -> list[float]:
    """``n_tasks`` angles evenly spaced in [0, 180): ``180 * t / n_tasks`` (task 0 unrotated)."""
    return [180.0 * t / n_tasks for t in range(n_tasks)]


def rotated(
    data: Data,
    n_tasks: int = 10,
    *,
    angles: Sequence[float] | str | None = None,
    seed: int = 0,
    name: str = "rotated",
    lazy: bool = False,
) -> Benchmark:
    """Rotated-MNIST-style tasks: the same classes, every image of task ``t`` rotated by a fixed
    angle (see :func:`rotate_images`; bilinear, zero padding).

    Args:
        data: ``(x_train, y_train, x_test, y_test)`` with images ``(N, C, H, W)``.
        n_tasks: number of tasks.
        angles: degrees per task; ``None`` (default) means evenly spaced in [0, 180)
            (:func:`default_angles`, so task 0 is unrotated); ``"random"`` draws each uniformly
            from [0, 180) with ``seed`` (the only use of the seed).
        seed: seed for ``angles="random"``.
        name: the benchmark's name.
        lazy: rotate the rows each batch reads instead of storing a rotated copy per task
            (less memory, the same values, a little more compute per batch).
    """
    xtr, ytr, xte, yte = _prepare(data)
    if xtr.ndim not in (3, 4):
        raise DataError(f"rotated needs images (N, C, H, W), got samples of {tuple(xtr.shape)}")
    if n_tasks <= 0:
        raise DataError(f"n_tasks must be a positive integer, got {n_tasks}")
    if angles is None:
        angle_list, how = default_angles(n_tasks), "evenly spaced in [0, 180)"
    elif isinstance(angles, str):
        if angles != "random":
            raise DataError(f"angles must be a list of degrees, None or 'random', got {angles!r}")
        g = torch.Generator().manual_seed(int(seed))
        angle_list = (torch.rand(n_tasks, generator=g, dtype=torch.float64) * 180.0).tolist()
        how = "uniform in [0, 180), seeded"
    else:
        angle_list, how = [float(a) for a in angles], "given"
        if len(angle_list) != n_tasks:
            raise DataError(f"{len(angle_list)} angles given for n_tasks={n_tasks}")
    transforms = [lambda x, a=a: rotate_images(x, a) for a in angle_list]
    names = [f"rotation {a:g} deg" for a in angle_list]
    tasks = _shared_class_tasks(xtr, ytr, xte, yte, transforms, names, lazy)
    info = {
        "scenario": "rotated",
        "angles": angle_list,
        "angles_from": how,
        "seed": seed,
        "lazy": lazy,
    }
    return Benchmark(name, tasks, tuple(xtr.shape[1:]), info)
