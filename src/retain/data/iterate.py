"""A fast batch iterator over tensors held in memory.

Batches are taken by indexing whole tensors with a slice of one seeded permutation: no
per-sample Python, no collation. ``torch.utils.data.DataLoader`` over a ``TensorDataset``
costs 1.4-1.5x the time of this on an MLP epoch here (``../shared/notes/environment.md``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor


def iterate_batches(
    tensors: Sequence[Tensor],
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, ...]]:
    """Yield tuples of aligned batches from ``tensors`` (all of the same length).

    Args:
        tensors: e.g. ``(x, y)``; indexed together.
        batch_size: samples per batch; the last batch may be smaller unless ``drop_last``.
        generator: the source of the shuffling order (seeded by the caller for determinism).
        shuffle: draw a fresh permutation each call; else keep the stored order.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError("all tensors must have the same length")
    if shuffle:
        order = torch.randperm(n, generator=generator)
        for idx in order.split(batch_size):
            if drop_last and len(idx) < batch_size:
                return
            yield tuple(t[idx] for t in tensors)
    else:
        for start in range(0, n, batch_size):
            if drop_last and start + batch_size > n:
                return
            yield tuple(t[start : start + batch_size] for t in tensors)
