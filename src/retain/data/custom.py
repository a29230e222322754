"""Bring your own data: a :class:`Benchmark` from tensors, arrays or torch Datasets in one call.

>>> bench = benchmark_from_tensors(x_train, y_train, x_test, y_test, tasks=[[3, 7], [1, 2]])
>>> bench = benchmark_from_tensors(x_train, y_train, x_test, y_test, n_tasks=5)
>>> bench = benchmark_from_task_tensors([(xtr0, ytr0, xte0, yte0), (xtr1, ytr1, xte1, yte1)])
>>> bench = benchmark_from_datasets(train_ds, test_ds, n_tasks=5)

Labels are your own class ids (any integers); each task maps its classes to local labels
``0 .. k-1`` in the order you list them. uint8 inputs become float32 / 255; float inputs are kept.
Every problem is a :class:`DataError` with one line saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from retain.data.benchmark import Benchmark, DataError, Task
from retain.data.convert import as_inputs, as_labels, local_labels
from retain.data.scenarios import group_classes, tasks_from_groups


def _check_pair(x: Tensor, y: Tensor, where: str) -> None:
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{where}: no samples")


def _check_finite(x: Tensor, what: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).reshape(len(x), -1).any(1)
        k = int(bad.sum())
        raise DataError(
            f"{what} hold NaN or infinite values ({k} sample{'s' if k != 1 else ''}, the first "
            f"is sample {int(bad.nonzero()[0])}); clean or drop them"
        )


def _prepare_split(x: Any, y: Any, where: str) -> tuple[Tensor, Tensor]:
    xt, yt = as_inputs(x, f"{where} inputs"), as_labels(y, f"{where} labels")
    _check_pair(xt, yt, where)
    _check_finite(xt, f"{where} inputs")
    return xt, yt


def _check_shapes(a: Tensor, b: Tensor, where_a: str, where_b: str) -> None:
    if a.shape[1:] != b.shape[1:]:
        raise DataError(
            f"{where_a} samples have shape {tuple(a.shape[1:])} but {where_b} samples "
            f"{tuple(b.shape[1:])}"
        )


def _validate_groups(tasks: Sequence[Sequence[int]], ytr: Tensor, yte: Tensor) -> list[list[int]]:
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or not tasks:
        raise DataError("tasks must be a non-empty list of class lists, e.g. [[0, 1], [2, 3]]")
    groups: list[list[int]] = []
    seen: dict[int, int] = {}
    train_classes = set(ytr.unique().tolist())
    test_classes = set(yte.unique().tolist())
    for i, group in enumerate(tasks):
        if isinstance(group, (int, str, bytes)) or not isinstance(group, Sequence):
            raise DataError(f"task {i}: expected a list of class ids, got {group!r}")
        if len(group) == 0:
            raise DataError(f"task {i} has no classes")
        ids = []
        for c in group:
            if isinstance(c, bool) or not isinstance(c, int):
                try:
                    c_int = int(c)
                    ok = c_int == c
                except (TypeError, ValueError):
                    ok = False
                if not ok:
                    raise DataError(f"task {i}: class {c!r} is not an integer class id")
                c = c_int
            if c in seen:
                raise DataError(f"class {c} is in task {seen[c]} and task {i}")
            seen[c] = i
            ids.append(c)
        missing_train = sorted(set(ids) - train_classes)
        if missing_train:
            raise DataError(f"task {i}: classes {missing_train} have no training samples")
        missing_test = sorted(set(ids) - test_classes)
        if missing_test:
            raise DataError(f"task {i}: classes {missing_test} have no test samples")
        groups.append(ids)
    return groups


def benchmark_from_tensors(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    tasks: Sequence[Sequence[int]] | None = None,
    n_tasks: int | None = None,
    name: str = "custom",
) -> Benchmark:
    """A class-split benchmark from one dataset held as tensors or numpy arrays.

    Give exactly one of ``tasks`` (a list of class-id lists; classes not named are dropped) or
    ``n_tasks`` (the sorted class ids cut into that many equal consecutive groups).

    Raises:
        DataError: NaN or infinite inputs, mismatched lengths, non-integer labels, differing
            train/test sample shapes, a class named in ``tasks`` with no train or test
            samples, a class in two tasks, an empty task, or classes that do not divide into
            ``n_tasks``.
    """
    if (tasks is None) == (n_tasks is None):
        raise DataError("give exactly one of tasks= (class lists) or n_tasks=")
    xtr, ytr = _prepare_split(x_train, y_train, "train")
    xte, yte = _prepare_split(x_test, y_test, "test")
    _check_shapes(xtr, xte, "train", "test")
    if tasks is not None:
        groups = _validate_groups(tasks, ytr, yte)
    else:
        if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks <= 0:
            raise DataError(f"n_tasks must be a positive integer, got {n_tasks!r}")
        classes = torch.cat([ytr, yte]).unique(sorted=True).tolist()
        groups = _validate_groups(group_classes(classes, n_tasks), ytr, yte)
    built = tasks_from_groups(xtr, ytr, xte, yte, groups)
    info = {"scenario": "custom split", "tasks": groups}
    return Benchmark(name, built, tuple(xtr.shape[1:]), info)


def benchmark_from_task_tensors(
    task_data: Sequence[tuple[Any, Any, Any, Any]],
    *,
    classes: Sequence[Sequence[int]] | None = None,
    names: Sequence[str] | None = None,
    name: str = "custom",
) -> Benchmark:
    """A benchmark from already-separated tasks ``[(x_train, y_train, x_test, y_test), ...]``,
    e.g. domain-incremental data where every task holds the same classes.

    Args:
        task_data: one tuple per task, in training order.
        classes: per task, its class ids in local-label order. Default: the sorted class ids
            present in that task (train and test together); pass them explicitly when a task
            could lack a class, so local labels stay the same across tasks.
        names: optional task names.
        name: the benchmark's name.
    """
    if isinstance(task_data, (str, bytes)) or not isinstance(task_data, Sequence) or not task_data:
        raise DataError("task_data must be a non-empty list of (x_train, y_train, x_test, y_test)")
    if classes is not None and len(classes) != len(task_data):
        raise DataError(f"{len(classes)} class lists given for {len(task_data)} tasks")
    if names is not None and len(names) != len(task_data):
        raise DataError(f"{len(names)} names given for {len(task_data)} tasks")
    built: list[Task] = []
    offset = 0
    first: Tensor | None = None
    for i, item in enumerate(task_data):
        if not isinstance(item, Sequence) or len(item) != 4:
            raise DataError(f"task {i}: expected (x_train, y_train, x_test, y_test)")
        xtr, ytr = _prepare_split(item[0], item[1], f"task {i} train")
        xte, yte = _prepare_split(item[2], item[3], f"task {i} test")
        _check_shapes(xtr, xte, f"task {i} train", f"task {i} test")
        if first is None:
            first = xtr
        else:
            _check_shapes(xtr, first, f"task {i}", "task 0")
        present = sorted(set(ytr.unique().tolist()) | set(yte.unique().tolist()))
        if classes is None:
            cls = present
        else:
            cls = [int(c) for c in classes[i]]
            if not cls:
                raise DataError(f"task {i} has no classes")
            if len(set(cls)) != len(cls):
                raise DataError(f"task {i}: classes {cls} list a class twice")
            extra = sorted(set(present) - set(cls))
            if extra:
                raise DataError(f"task {i}: labels {extra} are not among its classes {cls}")
        task_name = names[i] if names is not None else f"task {i}"
        built.append(
            Task(
                i,
                xtr,
                local_labels(ytr, cls),
                xte,
                local_labels(yte, cls),
                cls,
                offset,
                task_name,
            )
        )
        offset += len(cls)
    assert first is not None
    info = {"scenario": "custom tasks", "classes": [t.classes for t in built]}
    return Benchmark(name, built, tuple(first.shape[1:]), info)


def materialize(
    dataset: Any, batch_size: int = 1024, what: str = "dataset"
) -> tuple[Tensor, Tensor]:
    """Read a torch ``Dataset`` of ``(x, y)`` pairs into two tensors in one pass (batched by a
    ``DataLoader`` in order, no workers). Items must be tensors, numpy arrays or numbers."""
    from torch.utils.data import DataLoader

    try:
        n = len(dataset)
    except TypeError:
        raise DataError(f"{what}: needs a map-style Dataset with a length") from None
    if n == 0:
        raise DataError(f"{what}: is empty")
    xs, ys = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise DataError(f"{what}: items must be (x, y) pairs")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
    except DataError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(
            f"{what}: cannot batch its items into tensors ({str(e).splitlines()[0]}); "
            f"make __getitem__ return (tensor, int)"
        ) from None
    return torch.cat(xs), torch.cat(ys)


def benchmark_from_datasets(
    train_ds: Any,
    test_ds: Any,
    *,
    tasks: Sequence[Sequence[int]] | None = None,
    n_tasks: int | None = None,
    name: str = "custom",
    batch_size: int = 1024,
) -> Benchmark:
    """Like :func:`benchmark_from_tensors`, from two torch Datasets of ``(x, y)`` pairs, which are
    read into memory once (see :func:`materialize`)."""
    x_train, y_train = materialize(train_ds, batch_size, "train dataset")
    x_test, y_test = materialize(test_ds, batch_size, "test dataset")
    return benchmark_from_tensors(
        x_train, y_train, x_test, y_test, tasks=tasks, n_tasks=n_tasks, name=name
    )
