"""Every dataset a benchmark family reads, by name: :data:`DATASETS`.

A :class:`Dataset` pairs the name a benchmark records as its ``source`` (also the key of its
published statistics, :data:`~retain.data.vision_sources.STATS`) with the loader that reads it.
:meth:`Dataset.read` hands the loader the arguments it takes and cuts the result to
``train_per_class`` / ``test_per_class`` (see :func:`~retain.data.sources.class_subset`), so a
benchmark family can read any dataset through the same call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from retain.data.sources import (
    RawData,
    class_subset,
    load_digits,
    load_fashion_mnist,
    load_mnist5k,
)
from retain.data.vision_sources import (
    load_cifar10,
    load_cifar100,
    load_imagenette,
    load_mnist,
    load_notmnist,
    load_svhn,
    load_tinyimagenet,
)


@dataclass(frozen=True)
class Dataset:
    """A dataset as the benchmark families read it.

    Attributes:
        name: what a benchmark records as its ``source``; the key of the dataset's statistics.
        load: the loader; its keyword parameters are the reading arguments it takes.
    """

    name: str
    load: Callable[..., RawData]

    def read(self, **arguments: object) -> RawData:
        """The data loaded with those ``arguments`` the loader takes (the rest are ignored),
        then cut to ``train_per_class`` / ``test_per_class`` images per class if given."""
        takes = inspect.signature(self.load).parameters
        data = self.load(**{k: v for k, v in arguments.items() if k in takes})
        return class_subset(
            data,
            arguments.get("train_per_class"),  # type: ignore[arg-type]
            arguments.get("test_per_class"),  # type: ignore[arg-type]
            seed=0,
        )


def _mnist5k(split_seed: int = 0) -> RawData:
    return load_mnist5k(seed=split_seed)


def _digits(split_seed: int = 0) -> RawData:
    return load_digits(seed=split_seed)


def _cifar100_fine(root=None, download: bool = False) -> RawData:
    return load_cifar100(root, download).data


def _notmnist(root=None, download: bool = False) -> RawData:
    return load_notmnist(root, download)


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("mnist5k", _mnist5k),
        Dataset("digits", _digits),
        Dataset("fashion-mnist", load_fashion_mnist),
        Dataset("mnist", load_mnist),
        Dataset("cifar10", load_cifar10),
        Dataset("cifar100", _cifar100_fine),
        Dataset("svhn", load_svhn),
        Dataset("tinyimagenet", load_tinyimagenet),
        Dataset("imagenette", load_imagenette),
        Dataset("notmnist", _notmnist),
    )
}
