"""Tiny stand-ins of every paper-scale dataset, written in the real on-disk formats.

``write_fake_datasets(root)`` fills ``root`` as the real data root would be filled (IDX files,
CIFAR pickles, SVHN ``.mat`` files, TinyImageNet / Omniglot / notMNIST / Imagenette folders of
images, Fashion-MNIST IDX in ``root/fashion-mnist``), with a handful of images per class, so
the loaders, benchmarks and every shipped config can run end to end with no download: the tests
and CI do this (``RETAIN_DATA=root``, ``RETAIN_FASHION_MNIST=root/fashion-mnist``). Pixels are
random around a per-class level, so classes are (barely) learnable. Deterministic.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from retain.data.idx import write_idx


#: CIFAR-100 fine class -> superclass in the fake copy: a bijection per residue, so every
#: superclass ``c`` holds exactly the five fine classes ``f`` with ``f % 20 == (3 * c) % 20``.
def fake_coarse(fine: np.ndarray) -> np.ndarray:
    return (np.asarray(fine) * 7) % 20


def _images(rng: np.random.Generator, labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n_classes = int(labels.max()) + 1
    level = (labels * (200 // max(n_classes, 1))).reshape(-1, *([1] * len(shape)))
    noise = rng.integers(0, 56, size=(len(labels), *shape))
    return (level + noise).clip(0, 255).astype(np.uint8)


def _labels(n_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes), per_class)


def write_idx_set(folder: Path, train: int, test: int, seed: int) -> None:
    """MNIST-style IDX files (10 classes, ``train``/``test`` images per class) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, per in (("train", train), ("t10k", test)):
        y = _labels(10, per)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", _images(rng, y, (28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y.astype(np.uint8))


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, train: int = 5, test: int = 3, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    y = _labels(10, train)
    x = _images(rng, y, (3072,))
    order = rng.permutation(len(y))
    for i, part in enumerate(np.array_split(order, 5), 1):
        _pickle(folder / f"data_batch_{i}", {b"data": x[part], b"labels": y[part].tolist()})
    yt = _labels(10, test)
    _pickle(folder / "test_batch", {b"data": _images(rng, yt, (3072,)), b"labels": yt.tolist()})


def write_cifar100(root: Path, train: int = 3, test: int = 2, seed: int = 2) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per in (("train", train), ("test", test)):
        y = _labels(100, per)
        _pickle(
            folder / name,
            {
                b"data": _images(rng, y, (3072,)),
                b"fine_labels": y.tolist(),
                b"coarse_labels": fake_coarse(y).tolist(),
            },
        )


def write_svhn(root: Path, train: int = 4, test: int = 2, seed: int = 3) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder = root / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per in (("train", train), ("test", test)):
        y = _labels(10, per)
        x = _images(rng, y, (3, 32, 32)).transpose(2, 3, 1, 0)  # (32, 32, 3, N)
        savemat(folder / f"{name}_32x32.mat", {"X": x, "y": np.where(y == 0, 10, y)[:, None]})


def _save_images(paths_labels: list[tuple[Path, int]], n_classes: int, size, mode, rng) -> None:
    from PIL import Image

    for path, label in paths_labels:
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        a = _images(rng, np.array([label, n_classes - 1]), shape)[0]
        Image.fromarray(a, mode=None).save(path)


def write_tinyimagenet(
    root: Path, n_classes: int = 200, train: int = 2, test: int = 1, seed: int = 4
) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(n_classes)]
    items = [
        (folder / "train" / w / "images" / f"{w}_{k}.JPEG", c)
        for c, w in enumerate(wnids)
        for k in range(train)
    ]
    val = [
        (folder / "val" / "images" / f"val_{c}_{k}.JPEG", c)
        for c in range(n_classes)
        for k in range(test)
    ]
    _save_images(items + val, n_classes, (64, 64), "RGB", rng)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"{p.name}\t{wnids[c]}\t0\t0\t63\t63\n" for p, c in val)
    )


def write_omniglot(
    root: Path, alphabets: int = 2, chars: int = 12, drawings: int = 6, seed: int = 5
) -> None:
    rng = np.random.default_rng(seed)
    items, c = [], 0
    for s, set_name in enumerate(("images_background", "images_evaluation")):
        for a in range(alphabets // 2 if s else alphabets - alphabets // 2):
            for ch in range(chars):
                d = root / "omniglot-py" / set_name / f"Alphabet_{s}{a}" / f"character{ch + 1:02d}"
                items += [(d / f"{c:04d}_{k + 1:02d}.png", c) for k in range(drawings)]
                c += 1
    _save_images(items, c, (105, 105), "L", rng)


def write_notmnist(root: Path, per_class: int = 6, seed: int = 6) -> None:
    rng = np.random.default_rng(seed)
    items = [
        (root / "notMNIST_small" / letter / f"img{k}.png", i)
        for i, letter in enumerate("ABCDEFGHIJ")
        for k in range(per_class)
    ]
    _save_images(items, 10, (28, 28), "L", rng)


def write_imagenette(root: Path, train: int = 3, test: int = 2, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    wnids = [f"n{i:08d}" for i in range(10)]
    items = [
        (root / "imagenette2" / split / w / f"{w}_{k}.JPEG", c)
        for split, per in (("train", train), ("val", test))
        for c, w in enumerate(wnids)
        for k in range(per)
    ]
    _save_images(items, 10, (48, 36), "RGB", rng)  # not square: exercises resize + centre crop


def write_fake_datasets(root: str | Path) -> Path:
    """Write every fake dataset under ``root`` (created if needed); returns ``root``."""
    root = Path(root)
    write_idx_set(root / "MNIST" / "raw", train=6, test=3, seed=0)
    write_idx_set(root / "fashion-mnist", train=6, test=3, seed=8)
    write_cifar10(root)
    write_cifar100(root)
    write_svhn(root)
    write_tinyimagenet(root)
    write_omniglot(root)
    write_notmnist(root)
    write_imagenette(root)
    return root
