"""Tensors computed when read: :class:`LazyImages` (rows of a uint8 array, often memory-mapped)
and :class:`TransformedImages` (rows of a shared float copy through a per-task transform).

A :class:`~retain.data.Task` normally holds float32 images in memory. For datasets whose
float32 copy does not fit (TinyImageNet: 5 GB; Imagenette at 224 px: 6 GB), a task can hold a
:class:`LazyImages` instead: a float32 tensor *in shape only*, backed by rows of a uint8 array
(usually the memory-mapped cache of :mod:`retain.data.lazy`). Indexing it - what the batch
iterator, the evaluation loop and the replay buffers do - reads just those rows, converts them
to float32 in [0, 1] and normalises them; any other operation materialises the whole tensor
first (correct, but costly: avoid it on large data). Everything that treats tasks as tensors
keeps working unchanged.

:class:`TransformedImages` does the same for the permuted and rotated scenarios: instead of a
float32 copy of the whole dataset per task (2.2 GB for 10 tasks of Fashion-MNIST), every task
shows the one shared float32 copy through its own transform (a pixel permutation, a rotation),
applied to the rows a batch reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from retain.data.benchmark import DataError


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


class TransformedImages(LazyImages):
    """A float32 tensor in shape only whose rows are ``transform(source[index])``, computed when
    read. ``transform`` maps a float batch ``(n, *sample)`` to a batch of the same shape and
    treats each sample on its own, so that reading rows gives exactly the rows of
    ``transform(source)`` (a permutation or a rotation do).

    Args:
        source: float images ``(N, C, H, W)``, shared by every task that shows them.
        transform: the task's transform.
        index: rows of ``source`` this tensor shows (default: all, in order).
    """

    _transform: Callable[[Tensor], Tensor]

    @staticmethod
    def __new__(
        cls,
        source: Tensor,
        transform: Callable[[Tensor], Tensor],
        index: Tensor | None = None,
    ):
        if not torch.is_floating_point(source):
            raise DataError(f"TransformedImages needs float images, got {source.dtype}")
        index = torch.arange(len(source)) if index is None else index
        r = LazyImages.__new__(cls, source, index)
        r._transform = transform
        return r

    def __repr__(self) -> str:
        return f"TransformedImages(shape={tuple(self.shape)})"

    def rows(self, key: Any) -> Tensor:
        sub = self._index[key]
        x = self._transform(self._source[sub.reshape(-1)])
        return x[0] if sub.ndim == 0 else x

    def then(self, fn: Callable[[Tensor], Tensor]) -> TransformedImages:
        """The same rows with ``fn`` applied after this transform (e.g. a normalisation)."""
        first = self._transform
        return TransformedImages(self._source, lambda x: fn(first(x)), self._index)
