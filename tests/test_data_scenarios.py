"""Scenarios: split, permuted and rotated benchmarks built from small synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retain.data import (
    DataError,
    make_permutations,
    permute_pixels,
    permuted,
    rotate_images,
    rotated,
    split,
)


def labelled_images(n_per_class=6, n_classes=10, shape=(1, 4, 4), seed=0):
    """uint8 images whose first pixel is the class id, and the rest random."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = torch.randint(0, 256, (len(y), *shape), generator=g, dtype=torch.uint8)
    x.view(len(y), -1)[:, 0] = y.to(torch.uint8)
    return x, y


def data(n_classes=10, shape=(1, 4, 4)):
    xtr, ytr = labelled_images(6, n_classes, shape, seed=0)
    xte, yte = labelled_images(2, n_classes, shape, seed=1)
    return xtr, ytr, xte, yte


# --------------------------------------------------------------------------- split


def test_split_natural_order():
    b = split(data(), 5)
    assert b.n_tasks == 5 and b.classes_per_task == [2] * 5 and b.input_shape == (1, 4, 4)
    assert b.info["class_order"] == list(range(10)) and b.info["class_order_from"] == "natural"
    for t, task in enumerate(b):
        assert task.classes == [2 * t, 2 * t + 1] and task.class_offset == 2 * t
        assert task.x_train.dtype == torch.float32 and task.y_train.dtype == torch.int64
        assert float(task.x_train.max()) <= 1.0
        for x, y in ((task.x_train, task.y_train), (task.x_test, task.y_test)):
            original = torch.round(x.view(len(x), -1)[:, 0] * 255).long()
            assert torch.equal(torch.tensor(task.classes)[y], original)
        assert len(task.y_train) == 12 and len(task.y_test) == 4


def test_split_class_order_subset_and_local_labels():
    b = split(data(), 2, class_order=[7, 2, 9, 0])
    assert [t.classes for t in b] == [[7, 2], [9, 0]]
    t0 = b[0]
    original = torch.round(t0.x_train.view(len(t0.x_train), -1)[:, 0] * 255).long()
    assert torch.equal(t0.y_train, (original == 2).long())  # 7 -> 0, 2 -> 1
    assert b.n_classes == 4


def test_split_shuffle_is_seeded():
    a = split(data(), 5, shuffle_classes=True, seed=1)
    b = split(data(), 5, shuffle_classes=True, seed=1)
    c = split(data(), 5, shuffle_classes=True, seed=2)
    assert a.info["class_order"] == b.info["class_order"] != c.info["class_order"]
    assert sorted(a.info["class_order"]) == list(range(10))
    assert a.info["class_order_from"] == "shuffled"
    assert [t.classes for t in a] == [a.info["class_order"][i : i + 2] for i in range(0, 10, 2)]


def test_split_uneven_and_sizes():
    with pytest.raises(DataError, match="do not split evenly into 3 tasks; pass sizes="):
        split(data(), 3)
    b = split(data(), sizes=[4, 3, 3])
    assert b.classes_per_task == [4, 3, 3] and [t.class_offset for t in b] == [0, 4, 7]
    with pytest.raises(DataError, match="add up to 9"):
        split(data(), sizes=[4, 3, 2])
    with pytest.raises(DataError, match="3 task sizes given for n_tasks=2"):
        split(data(), 2, sizes=[4, 3, 3])


def test_split_bad_class_order():
    with pytest.raises(DataError, match=r"classes \[11\] that are not in the data"):
        split(data(), 1, class_order=[0, 11])
    with pytest.raises(DataError, match="more than once"):
        split(data(), 1, class_order=[0, 1, 1])


def test_split_accepts_numpy_and_float():
    xtr, ytr, xte, yte = data()
    b = split((xtr.float().numpy() / 255, ytr.numpy(), xte.float().numpy() / 255, yte.numpy()), 5)
    assert torch.allclose(b[0].x_train, split(data(), 5)[0].x_train)


def test_split_does_not_alias_inputs():
    xtr, ytr, xte, yte = data()
    xf = xtr.float() / 255
    b = split((xf, ytr, xte, yte), 1)
    b[0].x_train.zero_()
    assert float(xf.max()) > 0


# --------------------------------------------------------------------------- permuted


def test_permuted_same_perm_train_test_and_distinct_per_task():
    xtr, ytr, _, _ = data()
    b = permuted((xtr, ytr, xtr.clone(), ytr.clone()), 4, seed=3)
    assert b.n_tasks == 4 and b.input_shape == (1, 4, 4)
    assert [t.class_offset for t in b] == [0, 10, 20, 30] and b.n_classes == 40
    perms = make_permutations(4, 16, seed=3)
    xf = xtr.float() / 255
    for t, task in enumerate(b):
        assert torch.equal(task.x_train, task.x_test)  # same permutation on train and test
        assert torch.equal(task.x_train, permute_pixels(xf, perms[t]))
        assert torch.equal(task.y_train, ytr) and task.classes == list(range(10))
        assert not torch.equal(task.x_train, xf)  # every task permuted by default
    assert not torch.equal(b[0].x_train, b[1].x_train)
    assert b.info["identity_first"] is False and b.info["permuted_tasks"] == [0, 1, 2, 3]


def test_permute_pixels_moves_pixels():
    x = torch.arange(12.0).reshape(1, 3, 2, 2)
    perm = torch.tensor([11, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    out = permute_pixels(x, perm)
    assert out.shape == x.shape and out.flatten().tolist() == [11, *range(11)]


def test_permuted_identity_first():
    b = permuted(data(), 3, seed=5, identity_first=True)
    c = permuted(data(), 3, seed=5)
    assert torch.equal(b[0].x_train, data()[0].float() / 255)
    assert torch.equal(b[1].x_train, c[1].x_train) and torch.equal(b[2].x_test, c[2].x_test)
    assert b.info["permuted_tasks"] == [1, 2] and b[0].name == "identity"


def test_permutations_seeded():
    a, b = make_permutations(3, 50, seed=0), make_permutations(3, 50, seed=0)
    c = make_permutations(3, 50, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert all(sorted(p.tolist()) == list(range(50)) for p in a)


# --------------------------------------------------------------------------- rotated


def test_rotate_90_matches_rot90():
    x = torch.rand(5, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    out = rotate_images(x, 90)
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        rotate_images(x, -90), torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(rotate_images(x, 0), x, atol=1e-6, rtol=0)


def test_rotate_180_non_square():
    x = torch.rand(2, 1, 6, 10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rotate_images(x, 180), x.flip(-1, -2), atol=1e-5, rtol=0)
    x3 = x[:, 0]
    assert rotate_images(x3, 180).shape == x3.shape


def test_rotate_corners_fall_off_with_zero_padding():
    x = torch.ones(1, 1, 8, 8)
    out = rotate_images(x, 45)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 4, 4] == pytest.approx(1.0)


def test_rotate_rejects_integers():
    with pytest.raises(DataError, match="float"):
        rotate_images(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 10)


def test_rotated_benchmark():
    xtr, ytr, xte, yte = data(shape=(1, 6, 6))
    b = rotated((xtr, ytr, xte, yte), 4)
    assert b.info["angles"] == [0.0, 45.0, 90.0, 135.0]
    assert [t.class_offset for t in b] == [0, 10, 20, 30]
    torch.testing.assert_close(b[0].x_train, xtr.float() / 255, atol=1e-6, rtol=0)
    expected = torch.rot90(xte.float() / 255, 1, dims=(-2, -1))
    torch.testing.assert_close(b[2].x_test, expected, atol=1e-5, rtol=0)
    assert torch.equal(b[3].y_train, ytr)


def test_rotated_angles_options():
    b = rotated(data(), 2, angles=[10, 20])
    assert b.info["angles"] == [10.0, 20.0] and b.info["angles_from"] == "given"
    r1, r2 = (
        rotated(data(), 3, angles="random", seed=4),
        rotated(data(), 3, angles="random", seed=4),
    )
    assert r1.info["angles"] == r2.info["angles"]
    assert all(0 <= a < 180 for a in r1.info["angles"])
    assert rotated(data(), 3, angles="random", seed=5).info["angles"] != r1.info["angles"]
    with pytest.raises(DataError, match="2 angles given for n_tasks=3"):
        rotated(data(), 3, angles=[1, 2])
    with pytest.raises(DataError, match="needs images"):
        rotated((np.zeros((4, 5)), [0, 1, 0, 1], np.zeros((2, 5)), [0, 1]), 2)
