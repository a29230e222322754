"""The paper-scale datasets, read from their standard on-disk formats under one data root.

===============  ==========================================  =================================
dataset          files under the root                        used by
===============  ==========================================  =================================
MNIST            ``MNIST/raw/*-ubyte[.gz]`` (IDX)            Dynamos seq-MNIST, WSN PMNIST
CIFAR-10         ``cifar-10-batches-py/`` (python pickles)   5-Datasets
CIFAR-100        ``cifar-100-python/`` (fine + coarse)       ScrollNet T.1, WSN T.2, SPG C-n
SVHN             ``svhn/{train,test}_32x32.mat``             Dynamos seq-SVHN, 5-Datasets
TinyImageNet     ``tiny-imagenet-200/{train,val}`` (JPEG)    ScrollNet T.2, WSN T.2, SPG T-n
Omniglot         ``omniglot-py/images_{background,evaluation}``  WSN T.1 (Omniglot rotation)
notMNIST         ``notMNIST_small/A..J/*.png``               5-Datasets
Imagenette       ``imagenette2/{train,val}/<wnid>/*.JPEG``   Eidetic T.5
===============  ==========================================  =================================

The root is ``root=``, else ``$RETAIN_DATA``, else ``~/.cache/retain/data``; a loader also
accepts the dataset's own folder as ``root``. Every loader returns a
:class:`~retain.data.sources.RawData` of uint8 images ``(N, C, H, W)`` and int64 labels, never
downloads unless ``download=True`` (see :mod:`retain.data.download`), and raises
:class:`~retain.data.DataError` in one line for a missing, wrong or truncated file. Parsed files
are cached per process (:mod:`retain.data.file_cache`, keyed by path, size and mtime; cleared by
:func:`~retain.data.clear_cache`); each call returns fresh copies. Image
folders are decoded once into a uint8 array cache (:mod:`retain.data.lazy`), which
``lazy=True`` keeps memory-mapped instead of loading.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from retain.data.benchmark import DataError
from retain.data.download import data_root, download, missing
from retain.data.file_cache import fingerprint, parsed
from retain.data.idx import find_idx, read_idx
from retain.data.lazy import cached_images
from retain.data.safe_pickle import load_pickle
from retain.data.sources import RawData, load_cifar, stratified_split

#: Published per-channel statistics of the training sets (mean, std), used by ``normalize=True``.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "imagenette": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's
}

PathLike = str | os.PathLike


def _locate(
    name: str,
    root: PathLike | None,
    dl: bool,
    find: Callable[[Path], Path | None],
    problem: str,
) -> Path:
    """The dataset's folder: ``find(root)``, after a download when asked; else the clear error."""
    base = data_root(root)
    found = find(base)
    if found is None and dl:
        download(name, base)
        found = find(base)
    if found is None:
        raise missing(name, base, problem)
    return found


def _first_with(base: Path, subs: tuple[str, ...], ok: Callable[[Path], bool]) -> Path | None:
    for folder in [base / s for s in subs] + [base]:
        if folder.is_dir() and ok(folder):
            return folder
    return None


# --------------------------------------------------------------------------- MNIST (IDX)

_MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load_mnist(root: PathLike | None = None, download: bool = False) -> RawData:
    """Full MNIST (60,000 / 10,000 digits, uint8 ``(N, 1, 28, 28)``) from its four IDX files in
    ``ROOT/MNIST/raw`` (torchvision's layout), ``ROOT/mnist`` or ``ROOT`` itself.

    Raises:
        DataError: files missing (where expected, where to get them), not IDX, truncated, not
            28x28 uint8, labels outside 0..9, or image and label counts that disagree.
    """
    folder = _locate(
        "mnist",
        root,
        download,
        lambda b: _first_with(
            b, ("MNIST/raw", "mnist"), lambda f: all(find_idx(f, s) for s in _MNIST_STEMS)
        ),
        "no folder holds " + ", ".join(s + "[.gz]" for s in _MNIST_STEMS),
    )
    paths = [find_idx(folder, s) for s in _MNIST_STEMS]
    return _mnist_cached(fingerprint(paths)).clone()  # type: ignore[arg-type]


@parsed(maxsize=2)
def _mnist_cached(files: tuple[tuple[str, int, int], ...]) -> RawData:
    arrays = [read_idx(name) for name, _, _ in files]
    out = []
    for i in (0, 2):
        x, y = arrays[i], arrays[i + 1]
        xname, yname = files[i][0], files[i + 1][0]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DataError(f"{xname}: expected uint8 images (N, 28, 28), got {x.dtype} {x.shape}")
        if y.ndim != 1 or y.dtype != np.uint8 or len(y) != len(x):
            raise DataError(f"{yname}: expected {len(x)} uint8 labels, got {y.dtype} {y.shape}")
        if len(y) and int(y.max()) > 9:
            raise DataError(f"{yname}: labels must be 0..9, found {int(y.max())}")
        out += [torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))]
    return RawData(*out)


# --------------------------------------------------------------------------- CIFAR (pickles)

_CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def load_cifar10(root: PathLike | None = None, download: bool = False) -> RawData:
    """CIFAR-10 (50,000 / 10,000, uint8 ``(N, 3, 32, 32)``) from ``ROOT/cifar-10-batches-py``.

    Raises:
        DataError: files missing (where expected, where to get them) or with the wrong content.
    """
    folder = _locate(
        "cifar10",
        root,
        download,
        lambda b: _first_with(
            b, ("cifar-10-batches-py",), lambda f: all((f / n).is_file() for n in _CIFAR10_FILES)
        ),
        "no folder holds " + ", ".join(_CIFAR10_FILES),
    )
    return load_cifar(folder, 10)


class Cifar100(NamedTuple):
    """CIFAR-100 with both label sets: ``data`` has the 100 fine labels; ``coarse_train`` and
    ``coarse_test`` the 20 superclass labels of the same images."""

    data: RawData
    coarse_train: torch.Tensor
    coarse_test: torch.Tensor


def load_cifar100(root: PathLike | None = None, download: bool = False) -> Cifar100:
    """CIFAR-100 (50,000 / 10,000, uint8 ``(N, 3, 32, 32)``) from ``ROOT/cifar-100-python``
    (files ``train`` and ``test``), with fine (0..99) and coarse (0..19) labels.

    Raises:
        DataError: files missing (where expected, where to get them), not a CIFAR pickle,
            truncated, missing keys, wrong shapes or labels out of range.
    """
    folder = _locate(
        "cifar100",
        root,
        download,
        lambda b: _first_with(
            b, ("cifar-100-python",), lambda f: (f / "train").is_file() and (f / "test").is_file()
        ),
        "no folder holds the files train and test",
    )
    got = _cifar100_cached(fingerprint([folder / "train", folder / "test"]))
    return Cifar100(got.data.clone(), got.coarse_train.clone(), got.coarse_test.clone())


@parsed(maxsize=2)
def _cifar100_cached(files: tuple[tuple[str, int, int], ...]) -> Cifar100:
    parts = []
    for name, _, _ in files:
        path = Path(name)
        batch = load_pickle(path)
        for key in (b"data", b"fine_labels", b"coarse_labels"):
            if key not in batch:
                have = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
                raise DataError(f"{path}: needs keys data, fine_labels, coarse_labels; has {have}")
        x = np.asarray(batch[b"data"])
        fine = np.asarray(batch[b"fine_labels"], dtype=np.int64)
        coarse = np.asarray(batch[b"coarse_labels"], dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            raise DataError(f"{path}: data must be uint8 (N, 3072), got {x.dtype} {x.shape}")
        if fine.shape != (len(x),) or coarse.shape != (len(x),):
            raise DataError(
                f"{path}: {len(x)} images but {fine.shape} fine / {coarse.shape} coarse labels"
            )
        for what, y, n in (("fine", fine, 100), ("coarse", coarse, 20)):
            if len(y) and (y.min() < 0 or y.max() >= n):
                raise DataError(f"{path}: {what} labels must be 0..{n - 1}")
        parts.append((x.reshape(-1, 3, 32, 32), fine, coarse))
    (xtr, ftr, ctr), (xte, fte, cte) = parts
    data = RawData(*(torch.from_numpy(a) for a in (xtr, ftr, xte, fte)))
    return Cifar100(data, torch.from_numpy(ctr), torch.from_numpy(cte))


def superclass_groups(fine: torch.Tensor, coarse: torch.Tensor) -> list[list[int]]:
    """The 20 CIFAR-100 superclasses as lists of their fine classes (sorted), superclass 0
    first: the tasks of the WSN paper's CIFAR-100 Superclass benchmark (Table 2).

    Raises:
        DataError: a fine class that appears under two superclasses.
    """
    groups: dict[int, set[int]] = {}
    owner: dict[int, int] = {}
    for f, c in torch.stack([fine, coarse], 1).unique(dim=0).tolist():
        if owner.setdefault(f, c) != c:
            raise DataError(f"CIFAR-100: fine class {f} is under superclasses {owner[f]} and {c}")
        groups.setdefault(c, set()).add(f)
    return [sorted(groups[c]) for c in sorted(groups)]


# --------------------------------------------------------------------------- SVHN (.mat)


def load_svhn(root: PathLike | None = None, download: bool = False) -> RawData:
    """SVHN cropped digits (73,257 / 26,032, uint8 ``(N, 3, 32, 32)``) from
    ``train_32x32.mat`` and ``test_32x32.mat`` in ``ROOT/svhn`` or ``ROOT``; the files' label 10
    (digit 0) becomes 0. Needs scipy (``pip install 'retain-cl[data]'``).

    Raises:
        DataError: scipy missing, files missing (where expected, where to get them), a file that
            is not a readable MATLAB file, or arrays of the wrong shape.
    """
    names = ("train_32x32.mat", "test_32x32.mat")
    folder = _locate(
        "svhn",
        root,
        download,
        lambda b: _first_with(b, ("svhn", "SVHN"), lambda f: all((f / n).is_file() for n in names)),
        "no folder holds " + " and ".join(names),
    )
    return _svhn_cached(fingerprint([folder / n for n in names])).clone()


@parsed(maxsize=2)
def _svhn_cached(files: tuple[tuple[str, int, int], ...]) -> RawData:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("SVHN's .mat files need scipy: pip install 'retain-cl[data]'") from None
    out = []
    for name, _, _ in files:
        try:
            mat = loadmat(name)
        except Exception as e:  # scipy raises ValueError, OSError, MatReadError, TypeError
            first = (str(e) or type(e).__name__).splitlines()[0]
            raise DataError(f"{name}: not a readable SVHN .mat file ({first})") from None
        if "X" not in mat or "y" not in mat:
            raise DataError(f"{name}: needs the arrays X and y")
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
            raise DataError(f"{name}: X must be uint8 (32, 32, 3, N), got {x.dtype} {x.shape}")
        if len(y) != x.shape[3]:
            raise DataError(f"{name}: {x.shape[3]} images but {len(y)} labels")
        if len(y) and (y.min() < 1 or y.max() > 10):
            raise DataError(f"{name}: labels must be 1..10, got {y.min()}..{y.max()}")
        y[y == 10] = 0
        out += [
            torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))),
            torch.from_numpy(y),
        ]
    return RawData(*out)


# --------------------------------------------------------------------------- image folders


def _image_files(folder: Path) -> list[Path]:
    exts = {".jpeg", ".jpg", ".png"}
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file())


def load_tinyimagenet(
    root: PathLike | None = None,
    download: bool = False,
    size: int = 64,
    lazy: bool = False,
) -> RawData:
    """TinyImageNet (200 classes, 100,000 train / 10,000 val images, uint8 ``(N, 3, S, S)``)
    from ``ROOT/tiny-imagenet-200``: ``train/<wnid>/images/*.JPEG`` and ``val/images`` with
    ``val/val_annotations.txt``. The labelled val split is the test split (the test split has no
    labels), as in the ScrollNet, WSN and SPG setups. Classes are the sorted wnids of ``train/``.
    ``size`` resizes (bicubic; SPG uses 32). Decoded once into a cache beside the files;
    ``lazy=True`` returns memory-mapped arrays instead of loading them.

    Raises:
        DataError: folders missing (where expected, where to get them), an unreadable image,
            an annotation naming an unknown class or file.
    """
    folder = _locate(
        "tinyimagenet",
        root,
        download,
        lambda b: _first_with(
            b,
            ("tiny-imagenet-200",),
            lambda f: (f / "train").is_dir() and (f / "val" / "val_annotations.txt").is_file(),
        ),
        "no folder holds train/ and val/val_annotations.txt",
    )
    wnids = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    if not wnids:
        raise DataError(f"{folder / 'train'}: no class folders")
    index = {w: i for i, w in enumerate(wnids)}
    train: list[tuple[Path, int]] = []
    for w in wnids:
        sub = folder / "train" / w / "images"
        sub = sub if sub.is_dir() else folder / "train" / w
        train += [(p, index[w]) for p in _image_files(sub)]
    test: list[tuple[Path, int]] = []
    val_dir = folder / "val" / "images"
    ann = folder / "val" / "val_annotations.txt"
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{ann}:{n}: expected '<file>\\t<wnid>...' with a known wnid")
        path = val_dir / fields[0]
        if not path.is_file():
            raise DataError(f"{ann}:{n}: {path} does not exist")
        test.append((path, index[fields[1]]))
    return _folder_data("tinyimagenet", folder, train, test, size, "RGB", "resize", lazy)


def load_imagenette(
    root: PathLike | None = None,
    download: bool = False,
    size: int = 224,
    lazy: bool = True,
) -> RawData:
    """Imagenette (10 ImageNet classes, 9,469 train / 3,925 val images) as an ImageFolder:
    ``ROOT/imagenette2/{train,val}/<wnid>/*.JPEG`` (also ``imagenette2-320``/``-160``). Images
    are resized so the short side is ``size`` and centre-cropped to ``size x size`` (224 in the
    Eidetic paper, Table 5). Classes are the sorted wnids. At 224 px the uint8 arrays take 2 GB,
    so ``lazy=True`` (the default) keeps them memory-mapped.

    Raises:
        DataError: folders missing (where expected, where to get them) or an unreadable image.
    """
    folder = _locate(
        "imagenette",
        root,
        download,
        lambda b: _first_with(
            b,
            ("imagenette2", "imagenette2-320", "imagenette2-160"),
            lambda f: (f / "train").is_dir() and (f / "val").is_dir(),
        ),
        "no folder holds train/ and val/",
    )
    wnids = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    if not wnids:
        raise DataError(f"{folder / 'train'}: no class folders")
    splits = []
    for split in ("train", "val"):
        items = []
        for i, w in enumerate(wnids):
            if not (folder / split / w).is_dir():
                raise DataError(f"{folder / split}: no folder {w} (the classes of train/)")
            items += [(p, i) for p in _image_files(folder / split / w)]
        splits.append(items)
    return _folder_data("imagenette", folder, *splits, size, "RGB", "center", lazy)


def _folder_data(
    name: str,
    folder: Path,
    train: list[tuple[Path, int]],
    test: list[tuple[Path, int]],
    size: int,
    mode: str,
    fit: str,
    lazy: bool,
) -> RawData:
    if size < 8:
        raise DataError(f"size must be at least 8, got {size}")
    if not train or not test:
        raise DataError(f"{name}: {folder} holds no training or no test images")
    arrays = []
    for split, items in (("train", train), ("test", test)):
        x = cached_images(folder, f"{name}-{split}-{size}", [p for p, _ in items], size, mode, fit)
        if not lazy:
            x = torch.from_numpy(np.array(x))
        arrays += [x, torch.tensor([c for _, c in items], dtype=torch.int64)]
    return RawData(*arrays)


def load_omniglot(
    root: PathLike | None = None,
    download: bool = False,
    size: int = 32,
    test_per_class: int = 4,
    seed: int = 0,
) -> tuple[RawData, list[str]]:
    """Omniglot (1,623 characters x 20 drawings, background and evaluation sets) from
    ``ROOT/omniglot-py/images_{background,evaluation}/<alphabet>/<character>/*.png``
    (torchvision's layout; also ``ROOT/omniglot`` or ``ROOT``). Class ids follow the sorted
    (set, alphabet, character) paths; images are inverted (ink bright, as in MNIST) and resized
    to ``size`` (32, as WSN's official loader resizes them). Omniglot has no test split:
    ``test_per_class`` drawings of each character are held out (seeded). Returns the data and
    the class names.

    Raises:
        DataError: folders missing (where expected, where to get them), an unreadable image, or
            a character with too few drawings for the split.
    """
    sets = ("images_background", "images_evaluation")
    folder = _locate(
        "omniglot",
        root,
        download,
        lambda b: _first_with(
            b, ("omniglot-py", "omniglot"), lambda f: any((f / s).is_dir() for s in sets)
        ),
        "no folder holds images_background/ or images_evaluation/",
    )
    items: list[tuple[Path, int]] = []
    names: list[str] = []
    for s in sets:
        if not (folder / s).is_dir():
            continue
        for alphabet in sorted(p for p in (folder / s).iterdir() if p.is_dir()):
            for char in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                files = _image_files(char)
                if not files:
                    continue
                items += [(p, len(names)) for p in files]
                names.append(f"{alphabet.name}/{char.name}")
    if not items:
        raise DataError(f"Omniglot: no images under {folder}")
    x = cached_images(folder, f"omniglot-{size}", [p for p, _ in items], size, "L", "resize")
    x = 255 - np.array(x)
    y = np.array([c for _, c in items], dtype=np.int64)
    counts = np.bincount(y)
    if counts.min() <= test_per_class:
        raise DataError(
            f"Omniglot: a character has {counts.min()} drawings, too few to hold out "
            f"test_per_class={test_per_class}"
        )
    train_idx, test_idx = _per_class_split(y, test_per_class, seed)
    return (
        RawData(
            torch.from_numpy(x[train_idx]),
            torch.from_numpy(y[train_idx]),
            torch.from_numpy(x[test_idx]),
            torch.from_numpy(y[test_idx]),
        ),
        names,
    )


def _per_class_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n_test] for c in np.unique(y)])
    mask = np.ones(len(y), dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask), np.sort(test)


def load_notmnist(
    root: PathLike | None = None, download: bool = False, test_fraction: float = 0.2, seed: int = 0
) -> RawData:
    """notMNIST (letters A-J, 28x28 grayscale; ``notMNIST_small`` has about 18,700 images) from
    ``ROOT/notMNIST_small/<letter>/*.png``, with a seeded stratified hold-out of
    ``test_fraction`` (it has no split of its own). The archive ships two broken PNGs: unreadable
    images are skipped with one warning naming how many.

    Raises:
        DataError: folders missing (where expected, where to get them) or no readable image.
    """
    letters = "ABCDEFGHIJ"
    folder = _locate(
        "notmnist",
        root,
        download,
        lambda b: _first_with(
            b, ("notMNIST_small", "notMNIST"), lambda f: all((f / c).is_dir() for c in letters)
        ),
        "no folder holds the letter folders A..J",
    )
    from PIL import Image, UnidentifiedImageError

    xs, ys, broken = [], [], 0
    for label, letter in enumerate(letters):
        for path in _image_files(folder / letter):
            try:
                with Image.open(path) as im:
                    im = im.convert("L")
                    if im.size != (28, 28):
                        im = im.resize((28, 28), Image.BILINEAR)
                    xs.append(np.asarray(im, dtype=np.uint8))
            except (UnidentifiedImageError, OSError, SyntaxError):
                broken += 1
                continue
            ys.append(label)
    if broken:
        warnings.warn(f"notMNIST: skipped {broken} unreadable images in {folder}", stacklevel=2)
    if not ys:
        raise DataError(f"notMNIST: no readable image in {folder}")
    x, y = np.stack(xs)[:, None], np.asarray(ys, dtype=np.int64)
    train_idx, test_idx = stratified_split(y, max(1, round(test_fraction * len(y))), seed)
    return RawData(
        torch.from_numpy(x[train_idx]),
        torch.from_numpy(y[train_idx]),
        torch.from_numpy(x[test_idx]),
        torch.from_numpy(y[test_idx]),
    )
