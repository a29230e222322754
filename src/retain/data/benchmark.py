"""The two data types every part of retain speaks: :class:`Task` and :class:`Benchmark`.

A task holds its whole train and test split as tensors in memory. Labels inside a task are
*local* (``0 .. n_classes - 1``); a task's classes occupy the global label range
``class_offset .. class_offset + n_classes - 1``, so concatenating the per-task heads in task
order gives the class-incremental output space. Scenarios such as permuted or rotated MNIST,
whose tasks share the same ten original classes, still get disjoint global ranges; a model
with one shared head ignores the offsets (domain-incremental).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


class DataError(ValueError):
    """Raised for unusable data: a missing file, a wrong format, empty tasks, bad shapes."""


@dataclass
class Task:
    """One task of a benchmark.

    Attributes:
        id: position in the sequence, ``0 .. T-1``.
        x_train, y_train, x_test, y_test: float inputs and int64 *local* labels.
        classes: names (or original ids) of the task's classes, in local-label order.
        class_offset: global label of local label 0.
        name: a short human-readable description, e.g. ``"classes 0,1"``.
        ordered: the training samples form a stream to be seen once, in the stored order
            (general continual learning, e.g. ``mnist360-5k``): methods draw batches without
            shuffling and ``fit`` allows one epoch only.
    """

    id: int
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: list
    class_offset: int = 0
    name: str = ""
    ordered: bool = False

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def validate(self) -> None:
        """Check shapes, dtypes and label ranges; raise :class:`DataError` with one clear line."""
        where = f"task {self.id}"
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise DataError(f"{where}: {split} inputs and labels must be torch tensors")
            if len(x) == 0:
                raise DataError(f"{where}: the {split} split has no samples")
            if len(x) != len(y):
                raise DataError(f"{where}: {split} has {len(x)} inputs but {len(y)} labels")
            if y.ndim != 1:
                raise DataError(f"{where}: {split} labels must be 1-D, got shape {tuple(y.shape)}")
            if y.dtype != torch.long:
                raise DataError(f"{where}: {split} labels must be int64, got {y.dtype}")
            if not torch.is_floating_point(x):
                raise DataError(f"{where}: {split} inputs must be floating point, got {x.dtype}")
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= self.n_classes:
                raise DataError(
                    f"{where}: {split} labels span {lo}..{hi} but the task has "
                    f"{self.n_classes} classes (local labels must be 0..{self.n_classes - 1})"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{where}: train inputs have shape {tuple(self.x_train.shape[1:])} but test "
                f"inputs {tuple(self.x_test.shape[1:])}"
            )


@dataclass
class Benchmark:
    """A named sequence of tasks over inputs of one shape.

    Attributes:
        name: registry name or a user's label.
        tasks: the tasks in training order.
        input_shape: shape of one input, e.g. ``(1, 28, 28)`` or ``(784,)``.
        info: free-form facts about how it was built (seed, class order, permutation policy).
        built_by: set by :func:`~retain.data.get_benchmark` only: ``{"name", "args" (the
            keyword arguments given, as plain values), "n_tasks"}``, what a run folder's
            ``config.yaml`` records (:func:`retain.fit`); ``None`` for a benchmark built any
            other way (a copy with ``dataclasses.replace`` too).
    """

    name: str
    tasks: list[Task]
    input_shape: tuple[int, ...]
    info: dict = field(default_factory=dict)
    built_by: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def classes_per_task(self) -> list[int]:
        return [t.n_classes for t in self.tasks]

    @property
    def n_classes(self) -> int:
        """Size of the global (class-incremental) label space."""
        return sum(self.classes_per_task)

    def validate(self) -> None:
        if not self.tasks:
            raise DataError(f"benchmark {self.name!r} has no tasks")
        offset = 0
        for i, task in enumerate(self.tasks):
            if task.id != i:
                raise DataError(f"benchmark {self.name!r}: task at position {i} has id {task.id}")
            if task.class_offset != offset:
                raise DataError(
                    f"benchmark {self.name!r}: task {i} has class_offset {task.class_offset}, "
                    f"expected {offset} (offsets follow task order)"
                )
            offset += task.n_classes
            task.validate()
            if tuple(task.x_train.shape[1:]) != tuple(self.input_shape):
                raise DataError(
                    f"benchmark {self.name!r}: task {i} inputs have shape "
                    f"{tuple(task.x_train.shape[1:])}, expected {tuple(self.input_shape)}"
                )


def make_tasks(
    splits: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]],
    classes: Sequence[Sequence] | None = None,
    names: Sequence[str] | None = None,
) -> list[Task]:
    """Build consecutive :class:`Task` objects from ``(x_train, y_train, x_test, y_test)`` tuples
    with local labels, filling in ids and class offsets."""
    tasks, offset = [], 0
    for i, (xtr, ytr, xte, yte) in enumerate(splits):
        cls = list(classes[i]) if classes is not None else list(range(int(ytr.max()) + 1))
        task = Task(i, xtr, ytr, xte, yte, cls, offset, names[i] if names else f"task {i}")
        tasks.append(task)
        offset += len(cls)
    return tasks
