"""A tiny synthetic benchmark and backbone, so engine and method tests need no dataset."""

from __future__ import annotations

import torch
from torch import nn

from retain.data import Benchmark, make_tasks


def blobs(n_tasks: int = 3, per_class: int = 40, seed: int = 0) -> Benchmark:
    """``n_tasks`` tasks of two Gaussian classes each in 8 dimensions (separable)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(2 * n_tasks, 8, generator=g) * 3
    splits = []
    for t in range(n_tasks):
        parts = []
        for n in (per_class, per_class // 2):
            xs, ys = [], []
            for local in range(2):
                c = centers[2 * t + local]
                xs.append(c + torch.randn(n, 8, generator=g))
                ys.append(torch.full((n,), local, dtype=torch.long))
            parts += [torch.cat(xs), torch.cat(ys)]
        splits.append(tuple(parts))
    return Benchmark(
        "blobs", make_tasks(splits, [[2 * t, 2 * t + 1] for t in range(n_tasks)]), (8,)
    )


class TinyBackbone(nn.Module):
    def __init__(self, d_in: int = 8, d: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d), nn.ReLU(), nn.Dropout(dropout))
        self.out_features = d

    def forward(self, x):
        return self.net(x.flatten(1))
