"""Permuted and rotated tasks computed when read (``lazy=True``): the same values as the
stored copies, one shared copy of the images, and the same training run."""

from __future__ import annotations

import pytest
import torch

from retain.data import Benchmark, TransformedImages, get_benchmark, permuted, rotated
from retain.data import download as dl
from retain.data.fakes import write_fake_datasets
from retain.engine import fit
from retain.methods import make_method
from retain.models import build_model


def images(n_train=40, n_test=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(n_train, 1, 12, 12, generator=g),
        torch.arange(n_train) % 4,
        torch.rand(n_test, 1, 12, 12, generator=g),
        torch.arange(n_test) % 4,
    )


@pytest.fixture(params=["permuted", "rotated"])
def pair(request) -> tuple[Benchmark, Benchmark]:
    build = {
        "permuted": lambda lazy: permuted(images(), 3, seed=5, lazy=lazy),
        "rotated": lambda lazy: rotated(images(), 3, angles=[0, 33, 120], lazy=lazy),
    }[request.param]
    return build(False), build(True)


def test_lazy_rows_equal_the_stored_tasks(pair):
    eager, lazy = pair
    assert lazy.info["lazy"] and not eager.info["lazy"]
    for e, z in zip(eager, lazy):
        assert isinstance(z.x_train, TransformedImages) and z.x_train.shape == e.x_train.shape
        idx = torch.tensor([7, 0, 39, 7, 12])
        assert torch.equal(z.x_train[idx], e.x_train[idx])
        assert torch.equal(z.x_train[3], e.x_train[3])
        assert torch.equal(z.x_test[2:9], e.x_test[2:9])
        assert torch.equal(z.x_test + 0, e.x_test)  # any other op sees the whole tensor


def test_lazy_tasks_share_one_copy_of_the_images(pair):
    _, lazy = pair
    sources = {t.x_train._source.data_ptr() for t in lazy}
    assert len(sources) == 1


def test_training_on_lazy_tasks_gives_the_same_run(pair):
    results, weights = [], []
    for bench in pair:
        torch.manual_seed(0)
        model = build_model("mlp", bench.input_shape, bench.classes_per_task, hidden=[16])
        r = fit(model, bench, make_method("er", memory_size=12), epochs=2, batch_size=8, lr=0.1)
        results.append(r)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert results[0].task_aware.rows == results[1].task_aware.rows
    assert results[0].task_agnostic.rows == results[1].task_agnostic.rows
    assert torch.equal(weights[0], weights[1])


def test_then_composes_after_the_task_transform():
    x = torch.rand(6, 1, 4, 4)
    lazy = TransformedImages(x, lambda b: b.flip(-1))
    summed = lazy.then(lambda b: b.cumsum(-1))  # does not commute with the flip
    assert torch.equal(summed[torch.arange(6)], x.flip(-1).cumsum(-1))
    with pytest.raises(Exception, match="float"):
        TransformedImages(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), lambda b: b)


def test_permuted_mnist_lazy_and_normalised_equals_the_stored_copy(tmp_path, monkeypatch):
    root = write_fake_datasets(tmp_path)
    monkeypatch.setenv("RETAIN_DATA", str(root))
    monkeypatch.setattr(dl, "_torchvision_download", lambda name, root: False)
    for name in ("permuted-mnist", "rotated-mnist"):
        args = {"normalize": True} if name == "permuted-mnist" else {}
        eager = get_benchmark(name, n_tasks=2, **args)
        lazy = get_benchmark(name, n_tasks=2, lazy=True, **args)
        for e, z in zip(eager, lazy):
            assert isinstance(z.x_train, TransformedImages)
            assert torch.equal(z.x_train[torch.arange(len(e.x_train))], e.x_train), name
