"""General continual learning streams: no task boundaries, every sample seen once.

``rotating_pairs`` builds a stream in the spirit of MNIST-360 (Buzzega et al., "Dark Experience
for General Continual Learning", NeurIPS 2020, Section 5 and Appendix): classes ``0..K-1``
(MNIST-360 uses digits 0-8, leaving out 9, a rotated 6) arrive in overlapping pairs
``(0,1), (1,2), ..., (K-2,K-1), (K-1,0)``; the sequence of pairs is repeated ``rounds`` times,
so every class appears in ``2 * rounds`` phases and its training images are cut into that many
disjoint chunks, each used once. Within a phase the two chunks are interleaved in proportion to
their sizes, so any window of consecutive samples (a batch) mixes both classes. Every image of
class ``j`` is rotated by an angle that keeps turning along the stream: the ``k``-th of its
``N_j`` images by ``60 (j - 1) + 360 k / N_j`` degrees (the official stream's start angle and
step), so the class drifts through a full turn and reappears under new poses in every round.
Test images of class ``j`` get the angles ``360 k / M_j``, ``k = 0..M_j-1``, in a seeded random
order: the test set covers every pose.

The result is a :class:`~retain.data.Benchmark` with one :class:`~retain.data.Task` whose
``ordered`` flag tells methods to draw batches in stream order and ``fit`` to run one epoch:
the method sees no boundary at all, and the accuracy matrix is the single final accuracy the
general-continual-learning papers report.
"""

from __future__ import annotations

import torch

from retain.data.benchmark import Benchmark, DataError, Task
from retain.data.scenarios import Data, _prepare, rotate_images


def pair_sequence(n_classes: int, rounds: int) -> list[tuple[int, int]]:
    """The phases of the stream: ``rounds`` times ``(0,1), (1,2), ..., (K-1, 0)``."""
    one_round = [(j, (j + 1) % n_classes) for j in range(n_classes)]
    return one_round * rounds


def _interleave(a: int, b: int) -> torch.Tensor:
    """Order of ``a`` items of the first kind (``0..a-1``) and ``b`` of the second
    (``a..a+b-1``) such that every prefix holds both kinds in proportion to ``a : b``."""
    keys = torch.cat([(torch.arange(a) + 0.5) / a, (torch.arange(b) + 0.5) / b])
    return torch.argsort(keys, stable=True)


def rotating_pairs(
    data: Data,
    *,
    n_classes: int = 9,
    rounds: int = 3,
    seed: int = 0,
    name: str = "rotating-pairs",
) -> Benchmark:
    """Build the stream described in the module docstring from ``(x_train, y_train, x_test,
    y_test)`` with class ids ``0..``; classes ``>= n_classes`` are dropped.

    ``seed`` fixes which images land in which chunk, their order inside a phase and the test
    angles. Phase lengths and pairs are recorded in ``Benchmark.info``.
    """
    if n_classes < 2:
        raise DataError(f"a stream of class pairs needs n_classes >= 2, got {n_classes}")
    if rounds < 1:
        raise DataError(f"rounds must be at least 1, got {rounds}")
    xtr, ytr, xte, yte = _prepare(data)
    g = torch.Generator().manual_seed(int(seed))
    n_chunks = 2 * rounds
    chunks: list[list[torch.Tensor]] = []
    for j in range(n_classes):
        idx = torch.nonzero(ytr == j).flatten()
        if len(idx) < n_chunks:
            raise DataError(
                f"class {j} has {len(idx)} training images; the stream needs at least {n_chunks}"
            )
        idx = idx[torch.randperm(len(idx), generator=g)]
        chunks.append(list(torch.tensor_split(idx, n_chunks)))
    # the images of class j in the order the stream shows them, to give each its angle
    used = [0] * n_classes
    order, phase_lengths = [], []
    for a, b in pair_sequence(n_classes, rounds):
        ca, cb = chunks[a][used[a]], chunks[b][used[b]]
        used[a] += 1
        used[b] += 1
        both = torch.cat([ca, cb])
        # shuffle each chunk, then interleave the two proportionally
        ca_order = torch.randperm(len(ca), generator=g)
        cb_order = torch.randperm(len(cb), generator=g) + len(ca)
        mix = torch.cat([ca_order, cb_order])[_interleave(len(ca), len(cb))]
        order.append(both[mix])
        phase_lengths.append(len(both))
    stream = torch.cat(order)
    y_stream = ytr[stream]
    angles = torch.empty(len(stream), dtype=torch.float64)
    for j in range(n_classes):
        where = torch.nonzero(y_stream == j).flatten()
        step = 360.0 / len(where)
        angles[where] = 60.0 * (j - 1) + step * torch.arange(len(where), dtype=torch.float64)
    x_stream = rotate_images(xtr[stream], angles)

    keep = yte < n_classes
    x_test, y_test = xte[keep], yte[keep]
    test_angles = torch.empty(len(y_test), dtype=torch.float64)
    for j in range(n_classes):
        where = torch.nonzero(y_test == j).flatten()
        if len(where) == 0:
            raise DataError(f"class {j} has no test images")
        poses = 360.0 / len(where) * torch.arange(len(where), dtype=torch.float64)
        test_angles[where] = poses[torch.randperm(len(where), generator=g)]
    x_test = rotate_images(x_test, test_angles)

    task = Task(
        0,
        x_stream,
        y_stream,
        x_test,
        y_test,
        list(range(n_classes)),
        0,
        f"stream of {len(stream)} images",
        ordered=True,
    )
    info = {
        "scenario": "rotating-pairs stream",
        "n_classes": n_classes,
        "rounds": rounds,
        "pairs": [list(p) for p in pair_sequence(n_classes, rounds)],
        "phase_lengths": phase_lengths,
        "single_pass": True,
        "seed": seed,
    }
    return Benchmark(name, [task], tuple(xtr.shape[1:]), info)
