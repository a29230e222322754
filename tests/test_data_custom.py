"""Bring-your-own data: tensors, separated tasks, torch Datasets, and their error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from retain.data import (
    DataError,
    benchmark_from_datasets,
    benchmark_from_task_tensors,
    benchmark_from_tensors,
)


def user_data(classes=(3, 7, 5, 11), n_train=4, n_test=2):
    """uint8 images (1, 3, 3) whose first pixel is the user's class id."""

    def make(n, seed):
        y = torch.tensor(classes).repeat_interleave(n)
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 256, (len(y), 1, 3, 3), generator=g, dtype=torch.uint8)
        x[:, 0, 0, 0] = y.to(torch.uint8)
        return x, y

    return (*make(n_train, 0), *make(n_test, 1))


def first_pixel_class(x):
    return torch.round(x[:, 0, 0, 0] * 255).long()


def one_line_error(fn, *args, match, **kwargs):
    with pytest.raises(DataError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)


def test_from_tensors_with_task_lists():
    b = benchmark_from_tensors(*user_data(), tasks=[[7, 3], [11]])
    assert b.name == "custom" and b.classes_per_task == [2, 1]
    assert [t.classes for t in b] == [[7, 3], [11]] and [t.class_offset for t in b] == [0, 2]
    t0 = b[0]
    assert t0.x_train.dtype == torch.float32 and float(t0.x_train.max()) <= 1.0
    assert torch.equal(torch.tensor([7, 3])[t0.y_train], first_pixel_class(t0.x_train))
    assert torch.equal(b[1].y_test, torch.zeros(2, dtype=torch.long))
    assert b.info["tasks"] == [[7, 3], [11]]


def test_from_tensors_n_tasks_and_numpy():
    xtr, ytr, xte, yte = user_data()
    b = benchmark_from_tensors(
        xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), n_tasks=2, name="mine"
    )
    assert b.name == "mine" and [t.classes for t in b] == [[3, 5], [7, 11]]
    assert torch.equal(b[0].x_train, xtr[ytr <= 5].float() / 255)


def test_from_tensors_float_inputs_kept():
    xtr, ytr, xte, yte = user_data()
    xf = xtr.double() * 3.0  # any scale survives for float inputs
    b = benchmark_from_tensors(xf, ytr, xte.float(), yte, n_tasks=1)
    assert b[0].x_train.dtype == torch.float32 and float(b[0].x_train.max()) > 255


def test_from_tensors_errors():
    xtr, ytr, xte, yte = user_data()
    one_line_error(
        benchmark_from_tensors,
        xtr[:-1],
        ytr,
        xte,
        yte,
        n_tasks=2,
        match="train: 15 inputs but 16 labels",
    )
    one_line_error(
        benchmark_from_tensors,
        xtr,
        ytr.float(),
        xte,
        yte,
        n_tasks=2,
        match="labels must be integers",
    )
    one_line_error(
        benchmark_from_tensors,
        xtr,
        ytr,
        xte,
        yte,
        tasks=[[3, 4]],
        match=r"task 0: classes \[4\] have no training samples",
    )
    one_line_error(
        benchmark_from_tensors,
        xtr,
        ytr,
        xte[yte != 5],
        yte[yte != 5],
        tasks=[[5]],
        match="no test samples",
    )
    one_line_error(
        benchmark_from_tensors,
        xtr,
        ytr,
        xte,
        yte,
        tasks=[[3, 7], [7]],
        match="class 7 is in task 0 and task 1",
    )
    one_line_error(
        benchmark_from_tensors, xtr, ytr, xte, yte, tasks=[[3], []], match="task 1 has no classes"
    )
    one_line_error(benchmark_from_tensors, xtr, ytr, xte, yte, match="exactly one of")
    one_line_error(
        benchmark_from_tensors, xtr, ytr, xte, yte, tasks=[[3]], n_tasks=1, match="exactly one of"
    )
    one_line_error(
        benchmark_from_tensors, xtr, ytr, xte, yte, n_tasks=3, match="do not split evenly"
    )
    one_line_error(benchmark_from_tensors, xtr, ytr, xte[:, :, :2], yte, n_tasks=2, match="shape")
    one_line_error(
        benchmark_from_tensors, xtr.long() * 10, ytr, xte, yte, n_tasks=2, match="0..255"
    )
    one_line_error(
        benchmark_from_tensors, xtr, ytr, xte, yte, tasks=[[3.5]], match="not an integer"
    )
    one_line_error(
        benchmark_from_tensors, xtr[:0], ytr[:0], xte, yte, n_tasks=1, match="no samples"
    )


def test_from_task_tensors_domain_incremental():
    xtr, ytr, xte, yte = user_data(classes=(0, 1, 2))
    b = benchmark_from_task_tensors(
        [(xtr, ytr, xte, yte), (1 - xtr.float() / 255, ytr, xte.float() / 255, yte)]
    )
    assert b.n_tasks == 2 and [t.classes for t in b] == [[0, 1, 2], [0, 1, 2]]
    assert [t.class_offset for t in b] == [0, 3]
    assert torch.equal(b[1].y_train, ytr)


def test_from_task_tensors_explicit_classes():
    xtr, ytr, xte, yte = user_data(classes=(0, 2))
    b = benchmark_from_task_tensors([(xtr, ytr, xte, yte)], classes=[[0, 1, 2]], names=["a"])
    assert b[0].classes == [0, 1, 2] and b[0].name == "a"
    assert set(b[0].y_train.tolist()) == {0, 2}
    one_line_error(
        benchmark_from_task_tensors,
        [(xtr, ytr, xte, yte)],
        classes=[[0, 1]],
        match=r"labels \[2\] are not among",
    )


def test_from_task_tensors_errors():
    xtr, ytr, xte, yte = user_data()
    one_line_error(benchmark_from_task_tensors, [], match="non-empty")
    one_line_error(benchmark_from_task_tensors, [(xtr, ytr, xte)], match="task 0: expected")
    one_line_error(
        benchmark_from_task_tensors,
        [(xtr, ytr, xte, yte), (xtr[:, :, :2], ytr, xte[:, :, :2], yte)],
        match="task 1 samples have shape",
    )
    one_line_error(
        benchmark_from_task_tensors,
        [(xtr, ytr, xte, yte[:-1])],
        match="task 0 test: 8 inputs but 7 labels",
    )


class PairDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_from_datasets():
    xtr, ytr, xte, yte = user_data()
    b = benchmark_from_datasets(
        PairDataset(xtr, ytr), TensorDataset(xte, yte), tasks=[[3, 7], [5, 11]], batch_size=5
    )
    c = benchmark_from_tensors(xtr, ytr, xte, yte, tasks=[[3, 7], [5, 11]])
    for tb, tc in zip(b, c):
        assert torch.equal(tb.x_train, tc.x_train) and torch.equal(tb.y_test, tc.y_test)


def test_from_datasets_bad_items():
    class Words(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return "text", i

    xtr, ytr, _, _ = user_data()
    one_line_error(
        benchmark_from_datasets, Words(), PairDataset(xtr, ytr), n_tasks=1, match="train dataset"
    )
    one_line_error(
        benchmark_from_datasets,
        TensorDataset(xtr[:0], ytr[:0]),
        TensorDataset(xtr, ytr),
        n_tasks=1,
        match="empty",
    )
    one_line_error(
        benchmark_from_datasets,
        TensorDataset(xtr),
        TensorDataset(xtr, ytr),
        n_tasks=1,
        match=r"\(x, y\) pairs",
    )


def test_numpy_object_labels_rejected():
    xtr, _, xte, yte = user_data()
    one_line_error(
        benchmark_from_tensors,
        xtr,
        np.array(["a"] * 16, dtype=object),
        xte,
        yte,
        n_tasks=1,
        match="not numeric",
    )
