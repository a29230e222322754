"""Split tasks whose images stay on disk: :func:`lazy_split` (tasks of
:class:`~retain.data.lazy_images.LazyImages`).

See :mod:`retain.data.lazy_images` for how the images are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from retain.data.benchmark import Benchmark, DataError, Task
from retain.data.convert import as_labels, local_labels
from retain.data.lazy_images import LazyImages
from retain.data.scenarios import _all_classes, _class_name, group_classes

__all__ = ["LazyImages", "lazy_split"]  # LazyImages: re-exported for older imports


def lazy_split(
    data: Sequence[Any],
    n_tasks: int | None,
    *,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    seed: int = 0,
    name: str = "split",
    stats: tuple | None = None,
) -> Benchmark:
    """Like :func:`retain.data.scenarios.split` (same class order, groups and local labels), for
    uint8 images that stay where they are: every task's inputs are :class:`LazyImages`."""
    x_train, y_train, x_test, y_test = data
    ytr, yte = as_labels(y_train, "y_train"), as_labels(y_test, "y_test")
    present = _all_classes(ytr, yte)
    if class_order is not None:
        order = [int(c) for c in class_order]
        absent = sorted(set(order) - set(present))
        if absent or len(set(order)) != len(order):
            raise DataError(f"class_order must name distinct classes of the data, got {order}")
    elif shuffle_classes:
        g = torch.Generator().manual_seed(int(seed))
        order = [present[i] for i in torch.randperm(len(present), generator=g).tolist()]
    else:
        order = present
    groups = group_classes(order, n_tasks)
    tasks, offset = [], 0
    for i, group in enumerate(groups):
        ids = torch.tensor(group, dtype=torch.int64)
        itr = torch.isin(ytr, ids).nonzero().reshape(-1)
        ite = torch.isin(yte, ids).nonzero().reshape(-1)
        tasks.append(
            Task(
                i,
                LazyImages(x_train, itr, stats),
                local_labels(ytr[itr], group),
                LazyImages(x_test, ite, stats),
                local_labels(yte[ite], group),
                list(group),
                offset,
                _class_name(group),
            )
        )
        offset += len(group)
    info = {
        "scenario": "split",
        "class_order": order,
        "classes_per_task": [len(g) for g in groups],
        "seed": seed,
        "lazy": True,
    }
    return Benchmark(name, tasks, tuple(int(s) for s in x_train.shape[1:]), info)
