"""The benchmarks' ``normalize`` argument: which statistics, and applying them to tasks.

``normalize`` is ``false``, ``true`` (the dataset's published per-channel mean/std,
:data:`~retain.data.vision_sources.STATS`, or, for a dataset without published ones, those of
its training images) or ``{mean: [...], std: [...]}``. It is applied once, when the benchmark is
built, so random-crop padding is zero in normalised space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from retain.data.augment import normalize as normalize_batch
from retain.data.benchmark import Benchmark, DataError
from retain.data.lazy_images import TransformedImages
from retain.data.vision_sources import STATS

Normalize = bool | dict[str, Any]
Stats = tuple[Sequence[float], Sequence[float]]


def resolve_stats(spec: Normalize, dataset: str, x: torch.Tensor | None = None) -> Stats | None:
    """``(mean, std)`` for ``normalize=spec``, or None: the published statistics of
    ``dataset``, an explicit ``{mean, std}``, or (for datasets without published ones) those of
    the uint8 images ``x``.

    Raises:
        DataError: ``spec`` is none of ``true``, ``false``, ``{mean: [...], std: [...]}``.
    """
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


def normalize_tasks(
    bench: Benchmark, stats: Stats | None, tasks: Sequence[int] | None = None
) -> Benchmark:
    """Normalise the inputs of ``tasks`` (default: all) in place with ``stats`` (None: leave
    them) and record the statistics in ``info["normalize"]`` unless already there. Lazy inputs
    stay lazy: they are normalised as rows are read."""
    if stats is None:
        return bench
    mean, std = stats

    def norm(x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, TransformedImages):
            return x.then(lambda b: normalize_batch(b, mean, std))
        return normalize_batch(x, mean, std)

    for t in bench.tasks if tasks is None else [bench.tasks[i] for i in tasks]:
        t.x_train, t.x_test = norm(t.x_train), norm(t.x_test)
    bench.info.setdefault("normalize", {"mean": list(mean), "std": list(std)})
    return bench
