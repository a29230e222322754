import json
import math

import pytest
import torch

from retain.core.masks import raw_weight
from retain.data import Benchmark, make_tasks
from retain.engine import fit
from retain.methods import make_method
from retain.methods.packnet import PackNet
from retain.models import MLP, AlexNet, ContinualModel
from tests.synthetic import blobs

OPTIMISERS = {
    "sgd-momentum-wd": dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.05),
    "adamw": dict(optimizer="adamw", lr=0.01, weight_decay=0.1),
}


def _mlp(bench, seed=0, hidden=(32, 32)):
    torch.manual_seed(seed)
    return ContinualModel(MLP(bench.input_shape, hidden=hidden), bench.classes_per_task)


def tiny_images(n_tasks=2, per_class=12, side=16, seed=0) -> Benchmark:
    """Two-class tasks of random 1x16x16 images whose class shifts the mean (for AlexNet)."""
    g = torch.Generator().manual_seed(seed)
    splits = []
    for _ in range(n_tasks):
        parts = []
        for n in (per_class, per_class // 2):
            y = torch.arange(2).repeat_interleave(n)
            x = torch.randn(2 * n, 1, side, side, generator=g) + y.view(-1, 1, 1, 1) * 1.5
            parts += [x, y]
        splits.append(tuple(parts))
    tasks = make_tasks(splits, [[2 * t, 2 * t + 1] for t in range(n_tasks)])
    return Benchmark("tiny-images", tasks, (1, side, side))


def run_tracked(model, bench, method, **kw):
    """fit() that records, after every task, the task-aware logits of every learned task and
    a copy of every backbone parameter."""
    logits, params = [], []

    def on_end(i, _result):
        model.eval()
        logits.append([method.predict(bench[j].x_test, task_id=j).clone() for j in range(i + 1)])
        params.append({n: p.detach().clone() for n, p in model.backbone.named_parameters()})

    result = fit(model, bench, method, on_task_end=on_end, **kw)
    return result, logits, params


def assert_old_logits_bit_identical(logits):
    for i in range(1, len(logits)):
        for j in range(i):
            assert torch.equal(logits[i][j], logits[j][j]), f"task {j} changed after task {i}"


@pytest.mark.parametrize("opt", list(OPTIMISERS))
def test_old_tasks_bit_identical_and_frozen_weights_exact(opt):
    bench = blobs(n_tasks=4, per_class=24)
    model = _mlp(bench)
    method = make_method("packnet", prune_ratio=0.5, retrain_epochs=1)
    r, logits, params = run_tracked(
        model, bench, method, epochs=2, batch_size=16, **OPTIMISERS[opt]
    )
    assert_old_logits_bit_identical(logits)
    assert r.task_aware.summary()["bwt"] == 0.0
    for name, layer in method.layers.items():
        key = next(n for n, p in model.backbone.named_parameters() if p is raw_weight(layer))
        for t in range(bench.n_tasks):
            owned = method.bank.union(name, range(t + 1))
            assert torch.equal(params[-1][key][owned], params[t][key][owned])
    # biases: trained with the first task only
    for n in params[0]:
        if n.endswith("bias"):
            assert torch.equal(params[-1][n], params[0][n])
    for i in range(1, bench.n_tasks):  # learned every task (separable blobs)
        assert r.task_aware.rows[i][i] > 0.8


def test_masks_have_exact_sizes_are_disjoint_and_pruned_weights_are_zero():
    bench = blobs(n_tasks=3, per_class=24)
    model = _mlp(bench, hidden=(30, 17))
    method = make_method("packnet", prune_ratio=0.6, retrain_epochs=1)
    fit(model, bench, method, epochs=1, lr=0.1, batch_size=16)
    for name, layer in method.layers.items():
        n = raw_weight(layer).numel()
        free = n
        seen = torch.zeros(raw_weight(layer).shape, dtype=torch.bool)
        for t in range(3):
            m = method.bank.get(t, name)
            assert int(m.sum()) == round(0.4 * free)  # exactly the kept fraction of free weights
            assert not (m & seen).any()  # a weight has one owner
            seen |= m
            free -= int(m.sum())
        # weights never owned were pruned: exactly zero
        assert (raw_weight(layer).detach()[~seen] == 0).all()


def test_equal_share_gives_every_task_the_same_part_and_the_last_all_that_is_left():
    bench = blobs(n_tasks=4, per_class=16)
    model = _mlp(bench, hidden=(40, 40))
    method = make_method("packnet", prune_ratio=None, retrain_epochs=0)
    fit(model, bench, method, epochs=1, lr=0.1, batch_size=16)
    report = method.capacity_report()
    for name, layer in method.layers.items():
        n = raw_weight(layer).numel()
        sizes = [int(method.bank.get(t, name).sum()) for t in range(4)]
        assert sum(sizes) == n
        assert max(sizes) - min(sizes) <= 2
        assert report["layers"][name]["used_frac_after_task"][-1] == 1.0


def test_capacity_report_counts_used_weights_and_real_mask_bytes():
    bench = blobs(n_tasks=3, per_class=16)
    model = _mlp(bench, hidden=(64, 64))
    method = make_method("packnet", prune_ratio=0.5, retrain_epochs=0)
    r = fit(model, bench, method, epochs=1, lr=0.1, batch_size=16)
    rep = r.metrics()["method"]["capacity"]
    assert rep == method.capacity_report()
    json.dumps(rep)  # JSON-friendly
    for name, layer in method.layers.items():
        n = raw_weight(layer).numel()
        line = rep["layers"][name]
        union = method.bank.union(name)
        assert line["weights"] == n and line["used"] == int(union.sum())
        assert line["free"] == n - line["used"]
        expected = [1 - 0.5 ** (t + 1) for t in range(3)]
        assert line["used_frac_after_task"] == pytest.approx(expected, abs=2 / n)
        assert line["mask_bits"] == 3 * n
        assert line["mask_bytes_packed"] == 3 * math.ceil(n / 8)
        codes = [method.bank.code(t, name) for t in range(3)]
        assert line["mask_bytes_encoded"] == sum(len(c) for c in codes)
    tot = rep["total"]
    assert tot["weights"] == sum(rep["layers"][n]["weights"] for n in method.layers)
    assert tot["cap"] == pytest.approx(
        (tot["used"] + tot["mask_bytes_encoded"] / 4) / tot["weights"]
    )


def test_alexnet_conv_layers_zero_forgetting():
    bench = tiny_images(n_tasks=3)
    torch.manual_seed(0)
    model = ContinualModel(AlexNet((1, 16, 16), nhid=32, drop1=0.0, drop2=0.0), [2, 2, 2])
    method = make_method("packnet", retrain_epochs=1)
    _, logits, _ = run_tracked(
        model, bench, method, epochs=1, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.01
    )
    assert set(method.layers) == {"c1", "c2", "c3", "fc1", "fc2"}
    assert_old_logits_bit_identical(logits)


def test_refuses_shared_head_and_stateful_batchnorm():
    bench = blobs(n_tasks=2)
    with pytest.raises(ValueError, match="head"):
        fit(_mlp_shared(bench), bench, make_method("packnet"), epochs=1)
    torch.manual_seed(0)
    bn = ContinualModel(AlexNet((1, 16, 16), nhid=8, batch_norm="affine"), [2, 2])
    with pytest.raises(ValueError, match="normalisation"):
        PackNet().setup(bn, None)


def _mlp_shared(bench):
    torch.manual_seed(0)
    return ContinualModel(MLP(bench.input_shape, hidden=(8,)), bench.classes_per_task, "shared")


class Crash(Exception):
    pass


class CrashingPackNet(PackNet):
    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n, self.steps = n, 0

    def after_step(self, batch, task):
        super().after_step(batch, task)
        self.steps += 1
        if self.steps == self.n:
            raise Crash


# 24 samples = 2 batches per epoch; a task = 6 training steps then 4 retraining steps.
# Kept beside tests/test_contract.py (which kills PackNet in its training phase): kills inside
# the retraining phase
@pytest.mark.parametrize("crash_at", [9, 19])  # task 0 / 1 retraining
def test_resume_inside_a_task_gives_identical_metrics(tmp_path, crash_at):
    bench = blobs(n_tasks=2, per_class=12)
    kw = dict(epochs=3, lr=0.1, batch_size=12, momentum=0.9, checkpoint_every=1, seed=1)
    fit(_mlp(bench), bench, PackNet(retrain_epochs=2), run_dir=tmp_path / "a", **kw)
    with pytest.raises(Crash):
        fit(
            _mlp(bench),
            bench,
            CrashingPackNet(crash_at, retrain_epochs=2),
            run_dir=tmp_path / "b",
            **kw,
        )
    fit(_mlp(bench), bench, PackNet(retrain_epochs=2), run_dir=tmp_path / "b", resume=True, **kw)
    a = (tmp_path / "a" / "metrics.json").read_bytes()
    assert a == (tmp_path / "b" / "metrics.json").read_bytes()
    assert b'"capacity"' in a
