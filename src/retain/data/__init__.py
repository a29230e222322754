"""Data: sources, scenarios, named benchmarks, the batch iterator and bring-your-own data."""

from retain.data import catalog  # noqa: F401  (registers every named benchmark)
from retain.data.augment import normalize, random_crop, random_hflip
from retain.data.benchmark import Benchmark, DataError, Task, make_tasks
from retain.data.benchmarks import (
    BENCHMARKS,
    benchmark_parameters,
    describe_benchmarks,
    get_benchmark,
    register,
)
from retain.data.custom import (
    benchmark_from_datasets,
    benchmark_from_task_tensors,
    benchmark_from_tensors,
)
from retain.data.download import DATA_ENV, data_root
from retain.data.idx import read_idx, write_idx
from retain.data.iterate import iterate_batches
from retain.data.lazy_images import LazyImages, TransformedImages
from retain.data.lazy_tasks import lazy_split
from retain.data.scenarios import (
    make_permutations,
    permute_pixels,
    permuted,
    rotate_images,
    rotated,
    split,
)
from retain.data.sources import (
    RawData,
    class_subset,
    clear_cache,
    load_cifar,
    load_digits,
    load_fashion_mnist,
    load_mnist5k,
    stratified_split,
)
from retain.data.vision_sources import (
    load_cifar10,
    load_cifar100,
    load_imagenette,
    load_mnist,
    load_notmnist,
    load_omniglot,
    load_svhn,
    load_tinyimagenet,
    superclass_groups,
)

__all__ = [
    "BENCHMARKS",
    "DATA_ENV",
    "Benchmark",
    "DataError",
    "LazyImages",
    "RawData",
    "Task",
    "TransformedImages",
    "benchmark_from_datasets",
    "benchmark_from_task_tensors",
    "benchmark_from_tensors",
    "benchmark_parameters",
    "class_subset",
    "clear_cache",
    "data_root",
    "describe_benchmarks",
    "get_benchmark",
    "iterate_batches",
    "lazy_split",
    "load_cifar",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_fashion_mnist",
    "load_imagenette",
    "load_mnist",
    "load_mnist5k",
    "load_notmnist",
    "load_omniglot",
    "load_svhn",
    "load_tinyimagenet",
    "make_permutations",
    "make_tasks",
    "normalize",
    "permute_pixels",
    "permuted",
    "random_crop",
    "random_hflip",
    "read_idx",
    "register",
    "rotate_images",
    "rotated",
    "split",
    "stratified_split",
    "superclass_groups",
    "write_idx",
]
