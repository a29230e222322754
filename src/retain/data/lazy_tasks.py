"""Tasks whose images stay on disk: :class:`LazyImages` and :func:`lazy_split`.

A :class:`~retain.data.Task` normally holds float32 images in memory. For datasets whose
float32 copy does not fit (TinyImageNet: 5 GB; Imagenette at 224 px: 6 GB), a task can hold a
:class:`LazyImages` instead: a float32 tensor *in shape only*, backed by rows of a uint8 array
(usually the memory-mapped cache of :mod:`retain.data.lazy`). Indexing it - what the batch
iterator, the evaluation loop and the replay buffers do - reads just those rows, converts them
to float32 in [0, 1] and normalises them; any other operation materialises the whole tensor
first (correct, but costly: avoid it on large data). Everything that treats tasks as tensors
keeps working unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from retain.data.benchmark import Benchmark, DataError, Task
from retain.data.convert import as_labels, local_labels
from retain.data.scenarios import _all_classes, _class_name, group_classes


class LazyImages(Tensor):
    """A float32 ``(len(index), C, H, W)`` tensor whose row ``i`` is
    ``(source[index[i]] / 255 - mean) / std``, computed when read.

    Args:
        source: uint8 images ``(N, C, H, W)``: a numpy array (memory-mapped or not) or tensor.
        index: int64 rows of ``source`` this tensor shows, in order.
        stats: optional ``(mean, std)`` per channel (or scalars).
        pin: return batches in pinned memory (for fast non-blocking copies to a GPU).
    """

    _source: Any
    _index: Tensor
    _stats: tuple | None
    _pin: bool

    @staticmethod
    def __new__(cls, source: Any, index: Tensor, stats: tuple | None = None, pin: bool = False):
        if len(source.shape) != 4:
            raise DataError(f"LazyImages needs (N, C, H, W) images, got {tuple(source.shape)}")
        shape = (len(index), *[int(s) for s in source.shape[1:]])
        r = Tensor._make_wrapper_subclass(cls, shape, dtype=torch.float32, device="cpu")
        r._source, r._index, r._stats, r._pin = source, index.to(torch.int64), stats, pin
        return r

    def __repr__(self) -> str:
        return f"LazyImages(shape={tuple(self.shape)}, rows of a {type(self._source).__name__})"

    def rows(self, key: Any) -> Tensor:
        """Materialise ``self[key]`` (``key``: int, slice, index or boolean tensor, list)."""
        sub = self._index[key]
        single = sub.ndim == 0
        rows = sub.reshape(-1).numpy()
        if isinstance(self._source, Tensor):
            raw = self._source[torch.from_numpy(rows)]
        else:
            raw = torch.from_numpy(np.ascontiguousarray(self._source[rows]))
        if self._pin:
            raw = raw.pin_memory()
        x = raw.to(torch.float32).div_(255.0)
        if self._stats is not None:
            mean, std = (
                torch.as_tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1) for v in self._stats
            )
            x = x.sub_(mean).div_(std)
        return x[0] if single else x

    def materialize(self) -> Tensor:
        """The whole tensor in memory."""
        return self.rows(slice(None))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is Tensor.__getitem__ and isinstance(args[0], LazyImages):
            key = args[1]
            if isinstance(key, (int, slice, list)) or (
                isinstance(key, Tensor) and key.dtype in (torch.int64, torch.int32, torch.bool)
            ):
                return args[0].rows(key)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def real(a: Any) -> Any:
            return a.materialize() if isinstance(a, LazyImages) else a

        return func(*tree_map(real, args), **tree_map(real, kwargs or {}))


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
