"""Where the paper-scale datasets live on disk, and how they get there.

Every dataset of :mod:`retain.data.vision_sources` is read from a folder under one data root:
``root=`` if given, else ``$RETAIN_DATA``, else ``~/.cache/retain/data``. Nothing is ever
downloaded unless asked (``download=True``, ``benchmark_args.download: true``); then the files
come through torchvision when it is installed and knows the dataset, otherwise straight from the
official archive (:data:`SOURCES`), unpacked into the root. When the files are missing and no
download is possible, the :class:`~retain.data.DataError` says where they are expected and where
to get them, in one line.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from retain.data.benchmark import DataError

DATA_ENV = "RETAIN_DATA"
DEFAULT_DATA_ROOT = "~/.cache/retain/data"
#: seconds before a download attempt gives up on an unresponsive server
TIMEOUT = 30.0


@dataclass(frozen=True)
class Source:
    """One dataset's files: the folder they sit in under the root, the official archives
    (downloaded into the root and unpacked there) and a human hint for getting them by hand."""

    title: str
    folder: str
    urls: tuple[str, ...]
    hint: str
    torchvision: str | None = None  # the torchvision.datasets class that downloads it


SOURCES: dict[str, Source] = {
    "mnist": Source(
        "MNIST",
        "MNIST/raw",
        tuple(
            f"https://ossci-datasets.s3.amazonaws.com/mnist/{n}.gz"
            for n in (
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
            )
        ),
        "the four IDX files (train/t10k images/labels, .gz or not) from "
        "http://yann.lecun.com/exdb/mnist/",
        "MNIST",
    ),
    "cifar10": Source(
        "CIFAR-10",
        "cifar-10-batches-py",
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpacked",
        "CIFAR10",
    ),
    "cifar100": Source(
        "CIFAR-100",
        "cifar-100-python",
        ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
        "cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpacked",
        "CIFAR100",
    ),
    "svhn": Source(
        "SVHN",
        "svhn",
        (
            "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
        ),
        "train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/",
        "SVHN",
    ),
    "tinyimagenet": Source(
        "TinyImageNet",
        "tiny-imagenet-200",
        ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
        "tiny-imagenet-200.zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip, unpacked",
    ),
    "omniglot": Source(
        "Omniglot",
        "omniglot-py",
        (
            "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
            "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
        ),
        "images_background.zip and images_evaluation.zip from "
        "https://github.com/brendenlake/omniglot/tree/master/python, unpacked",
        "Omniglot",
    ),
    "notmnist": Source(
        "notMNIST",
        "notMNIST_small",
        ("http://yaroslavvb.com/upload/notMNIST/notMNIST_small.tar.gz",),
        "notMNIST_small.tar.gz (folders A..J of 28x28 PNGs) from "
        "http://yaroslavvb.blogspot.com/2011/09/notmnist-dataset.html, unpacked",
    ),
    "imagenette": Source(
        "Imagenette",
        "imagenette2",
        ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz",),
        "imagenette2.tgz from https://github.com/fastai/imagenette, unpacked",
    ),
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else ``$RETAIN_DATA``, else ``~/.cache/retain/data``."""
    if root is None:
        root = os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT
    return Path(root).expanduser()


def missing(name: str, root: Path, problem: str) -> DataError:
    """The one-line error for a dataset that is not on disk: what is wrong, where the files are
    expected, and where to get them."""
    src = SOURCES[name]
    return DataError(
        f"{src.title} not found: {problem}; files expected at {root / src.folder}; get "
        f"{src.hint}, or pass download=true (benchmark_args.download=true) where the network "
        f"allows; the root is root= or ${DATA_ENV} (default {DEFAULT_DATA_ROOT})"
    )


def download(name: str, root: Path) -> None:
    """Fetch dataset ``name`` into ``root``: through torchvision when it is installed and has
    the dataset, else the official archives of :data:`SOURCES` (unpacked in ``root``).

    Raises:
        DataError: the download or unpacking failed (one line: the URL and the reason, where the
            files are expected and how to get them by hand).
    """
    src = SOURCES[name]
    root.mkdir(parents=True, exist_ok=True)
    if src.torchvision is not None and _torchvision_download(name, root):
        return
    for url in src.urls:
        target = root / url.rsplit("/", 1)[1]
        if name in ("mnist", "svhn"):  # single files, kept as they are in the dataset folder
            target = root / src.folder / target.name
            target.parent.mkdir(parents=True, exist_ok=True)
        _fetch(name, url, target, root)
        if target.name.endswith((".tar.gz", ".tgz", ".zip")):
            _unpack(name, target, root)


def _torchvision_download(name: str, root: Path) -> bool:
    """Download through torchvision (into its own layout, which the loaders read); False when
    torchvision is missing or broken (a CPU torch beside a CUDA torchvision fails on import)."""
    try:
        import torchvision.datasets as tvd
    except Exception:  # ImportError, or RuntimeError from a mismatched build
        return False
    cls = getattr(tvd, SOURCES[name].torchvision or "", None)
    if cls is None:
        return False
    try:
        if name == "svhn":
            for split in ("train", "test"):
                cls(str(root / SOURCES[name].folder), split=split, download=True)
        elif name == "omniglot":
            for background in (True, False):
                cls(str(root), background=background, download=True)
        else:
            for train in (True, False):
                cls(str(root), train=train, download=True)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError on network failure
        raise missing(name, root, f"torchvision could not download it ({_first_line(e)})") from None
    return True


def _fetch(name: str, url: str, target: Path, root: Path) -> None:
    if target.is_file():
        return
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, partial.open("wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as e:
        partial.unlink(missing_ok=True)
        raise missing(name, root, f"download of {url} failed ({_first_line(e)})") from None
    partial.replace(target)


def _unpack(name: str, archive: Path, root: Path) -> None:
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                dest = root / SOURCES[name].folder if name == "omniglot" else root
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                t.extractall(root, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"{archive}: cannot unpack ({_first_line(e)}); delete it and retry"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0]
