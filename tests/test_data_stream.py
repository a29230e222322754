"""The MNIST-360-style stream: each image once, pairs in order, drifting angles, one pass."""

from __future__ import annotations

import pytest
import torch

from retain.data import DataError, get_benchmark
from retain.data.scenarios import rotate_images
from retain.data.stream import pair_sequence, rotating_pairs
from retain.methods.base import BenchmarkInfo

SIZE = 29  # odd: the centre pixel is the rotation centre and keeps its value exactly


def _data(per_class=(13, 12, 14, 12), n_test=5):
    """Images whose centre pixel encodes a unique id, on a random texture."""
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    x = torch.rand(len(y), 1, SIZE, SIZE, generator=g)
    ids = (torch.arange(len(y)) + 1).float() / 1000
    x[:, 0, SIZE // 2, SIZE // 2] = ids
    yt = torch.arange(len(per_class)).repeat_interleave(n_test)
    xt = torch.rand(len(yt), 1, SIZE, SIZE, generator=g)
    return x, y, xt, yt, ids


def test_pair_sequence_overlaps_and_wraps():
    assert pair_sequence(3, 2) == [(0, 1), (1, 2), (2, 0)] * 2


def test_every_image_once_and_phases_hold_their_pair():
    x, y, xt, yt, _ = _data()
    bench = rotating_pairs((x, y, xt, yt), n_classes=3, rounds=2, seed=1)
    task = bench[0]
    assert task.ordered and bench.n_tasks == 1
    centre = task.x_train[:, 0, SIZE // 2, SIZE // 2]
    source = torch.round(centre * 1000).long() - 1
    kept = torch.nonzero(y < 3).flatten()
    assert sorted(source.tolist()) == kept.tolist()  # each training image of classes 0-2 once
    assert torch.equal(task.y_train, y[source])
    start = 0
    for (a, b), n in zip(bench.info["pairs"], bench.info["phase_lengths"]):
        labels = task.y_train[start : start + n]
        assert set(labels.tolist()) == {a, b}
        # interleaved: no window of 4 consecutive samples holds only one class
        for i in range(n - 3):
            assert len(set(labels[i : i + 4].tolist())) == 2
        start += n
    assert start == len(task.y_train)
    assert torch.equal(task.y_test, yt[yt < 3])


def test_angles_drift_through_a_full_turn_per_class():
    x, y, xt, yt, _ = _data()
    task = rotating_pairs((x, y, xt, yt), n_classes=3, rounds=2, seed=0)[0]
    source = torch.round(task.x_train[:, 0, SIZE // 2, SIZE // 2] * 1000).long() - 1
    for j in range(3):
        where = torch.nonzero(task.y_train == j).flatten()
        n = len(where)
        for k in (0, n // 2, n - 1):
            i = int(where[k])
            angle = 60.0 * (j - 1) + 360.0 * k / n
            expected = rotate_images(x[source[i] : source[i] + 1], angle)
            assert torch.allclose(task.x_train[i : i + 1], expected, atol=1e-6), (j, k)


def test_same_seed_same_stream_other_seed_other_order():
    x, y, xt, yt, _ = _data()
    a = rotating_pairs((x, y, xt, yt), n_classes=3, rounds=1, seed=0)[0]
    b = rotating_pairs((x, y, xt, yt), n_classes=3, rounds=1, seed=0)[0]
    c = rotating_pairs((x, y, xt, yt), n_classes=3, rounds=1, seed=1)[0]
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_bad_stream_arguments():
    x, y, xt, yt, _ = _data(per_class=(3, 12, 14, 12))
    with pytest.raises(DataError, match="class 0 has 3 training images"):
        rotating_pairs((x, y, xt, yt), n_classes=3, rounds=2)
    with pytest.raises(DataError, match="n_classes >= 2"):
        rotating_pairs((x, y, xt, yt), n_classes=1)
    with pytest.raises(DataError, match="n_tasks must be 1"):
        get_benchmark("mnist360-5k", n_tasks=5)


def test_named_stream_is_one_ordered_task_of_nine_digits():
    bench = get_benchmark("mnist360-5k")
    task = bench[0]
    assert bench.n_tasks == 1 and task.ordered and task.classes == list(range(9))
    assert len(task.y_train) == sum(bench.info["phase_lengths"]) and len(bench.info["pairs"]) == 27
    assert int(task.y_train.max()) == 8 and int(task.y_test.max()) == 8


def test_methods_see_the_stream_in_order_and_fit_refuses_a_second_epoch():
    from retain.engine import fit
    from retain.methods import make_method
    from retain.models import build_model

    x, y, xt, yt, _ = _data()
    bench = rotating_pairs((x, y, xt, yt), n_classes=3, rounds=1)
    task = bench[0]
    for name in ("finetune", "er", "icarl"):
        method = make_method(name)
        model = build_model("mlp", bench.input_shape, bench.classes_per_task, hidden=[8])
        method.setup(model, BenchmarkInfo(1, bench.classes_per_task, bench.input_shape))
        method.before_task(task)
        seen = torch.cat([b.y for b in method.batches(task, 5, torch.Generator())])
        assert torch.equal(seen, task.y_train), name
    model = build_model("mlp", bench.input_shape, bench.classes_per_task, hidden=[8])
    with pytest.raises(ValueError, match="single-pass stream: epochs must be 1, got 2"):
        fit(model, bench, make_method("finetune"), epochs=2)


def test_cli_rejects_a_second_epoch_on_a_stream(tmp_path, capsys):
    from retain.cli import main

    out = tmp_path / "run"
    argv = ["run", "--method", "finetune", "--set", "benchmark=mnist360-5k", "--set", "epochs=2"]
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "single-pass stream: epochs must be 1" in err[0]
    assert not out.exists()
