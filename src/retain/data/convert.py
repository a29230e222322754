"""Turn user or source arrays into the tensors a :class:`~retain.data.benchmark.Task` holds.

Inputs become float32 (integer pixels are divided by 255, so uint8 images land in [0, 1]);
labels become int64. The result never shares memory with the argument, so a benchmark can be
modified in place without touching a cached source or the caller's data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from retain.data.benchmark import DataError


def _as_tensor(a: Any, what: str) -> Tensor:
    if isinstance(a, Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise DataError(f"{what}: numpy array of Python objects is not numeric data")
        return torch.from_numpy(np.ascontiguousarray(a))
    try:
        return torch.as_tensor(a)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{what}: cannot be turned into a tensor ({e})") from None


def as_inputs(x: Any, what: str = "inputs") -> Tensor:
    """A float32 copy of ``x``: uint8 (or any integer type with values 0..255) divided by 255,
    bool as 0/1, floating point cast to float32 unchanged."""
    t = _as_tensor(x, what)
    if t.ndim == 0:
        raise DataError(f"{what}: expected a batch of samples, got a scalar")
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    if t.dtype == torch.bool:
        return t.to(torch.float32)
    if torch.is_floating_point(t):
        return t.to(torch.float32, copy=True)
    if torch.is_complex(t):
        raise DataError(f"{what}: complex inputs are not supported")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > 255):
        raise DataError(
            f"{what}: integer inputs ({t.dtype}) must be pixel values 0..255, "
            f"got {int(t.min())}..{int(t.max())}; pass floats to keep other scales"
        )
    return t.to(torch.float32).div_(255.0)


def as_labels(y: Any, what: str = "labels") -> Tensor:
    """An int64 1-D copy of ``y``; floating, bool or complex labels raise :class:`DataError`."""
    t = _as_tensor(y, what)
    if t.dtype == torch.bool or torch.is_floating_point(t) or torch.is_complex(t):
        raise DataError(f"{what}: labels must be integers, got {t.dtype}")
    if t.ndim != 1:
        raise DataError(f"{what}: labels must be 1-D, got shape {tuple(t.shape)}")
    return t.to(torch.int64, copy=True)


def local_labels(y: Tensor, classes: list[int]) -> Tensor:
    """Map original class ids in ``y`` (all members of ``classes``) to their positions in
    ``classes``, i.e. local labels ``0 .. len(classes) - 1``."""
    ids = torch.tensor(classes, dtype=torch.int64)
    sorted_ids, order = ids.sort()
    pos = torch.searchsorted(sorted_ids, y).clamp_(max=len(classes) - 1)
    if not bool((sorted_ids[pos] == y).all()):
        missing = sorted(set(y.unique().tolist()) - set(classes))
        raise DataError(f"labels {missing} are not among the classes {classes}")
    return order[pos]
