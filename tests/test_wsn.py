import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retain.core.masks import decode_mask, density_count, mask_of, raw_weight
from retain.data import Benchmark, make_tasks
from retain.engine import fit
from retain.methods import make_method
from retain.methods.wsn import WSN
from retain.models import MLP, AlexNet, ContinualModel
from tests.synthetic import blobs

OPTIMISERS = {
    "sgd-momentum-wd": dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.05),
    "adamw": dict(optimizer="adamw", lr=0.01, weight_decay=0.1),
}


def _mlp(bench, seed=0, hidden=(32, 32), bias=False):
    torch.manual_seed(seed)
    return ContinualModel(MLP(bench.input_shape, hidden=hidden, bias=bias), bench.classes_per_task)


def _tiny_images(n_tasks=2, per_class=12, side=16, seed=0) -> Benchmark:
    """Two-class tasks of random 1x16x16 images whose class shifts the mean (for AlexNet)."""
    g = torch.Generator().manual_seed(seed)
    splits = []
    for _ in range(n_tasks):
        parts = []
        for n in (per_class, per_class // 2):
            y = torch.arange(2).repeat_interleave(n)
            parts += [torch.randn(2 * n, 1, side, side, generator=g) + y.view(-1, 1, 1, 1), y]
        splits.append(tuple(parts))
    tasks = make_tasks(splits, [[2 * t, 2 * t + 1] for t in range(n_tasks)])
    return Benchmark("tiny-images", tasks, (1, side, side))


def _run_tracked(model, bench, method, **kw):
    """fit() recording after every task the task-aware logits of every learned task and a copy
    of every masked weight."""
    logits, weights = [], []

    def on_end(i, _result):
        model.eval()
        logits.append([method.predict(bench[j].x_test, task_id=j).clone() for j in range(i + 1)])
        weights.append({n: w.detach().clone() for n, w in method.weights().items()})

    return fit(model, bench, method, on_task_end=on_end, **kw), logits, weights


@pytest.mark.parametrize(
    ("opt", "bias"), [("sgd-momentum-wd", False), ("adamw", False), ("sgd-momentum-wd", True)]
)
def test_bwt_is_exactly_zero_and_old_logits_bit_identical(opt, bias):
    bench = blobs(n_tasks=4, per_class=24)
    model = _mlp(bench, bias=bias)
    method = make_method("wsn", capacity=0.3)
    r, logits, weights = _run_tracked(
        model, bench, method, epochs=3, batch_size=16, **OPTIMISERS[opt]
    )
    for i in range(1, 4):
        for j in range(i):
            assert torch.equal(logits[i][j], logits[j][j]), f"task {j} changed after task {i}"
    assert r.task_aware.summary()["bwt"] == 0.0
    assert r.task_aware.summary()["forgetting"] == 0.0
    for name in method.layers:
        for t in range(4):  # weights of M_t never move again; free weights keep learning
            used = method.bank.union(name, range(t + 1))
            assert torch.equal(weights[-1][name][used], weights[t][name][used])
        assert not torch.equal(weights[-1][name], weights[0][name])
    diagonal = [r.task_aware.rows[i][i] for i in range(4)]
    assert min(diagonal) > 0.7 and sum(diagonal) / 4 > 0.85  # every task is learned


@pytest.mark.parametrize("capacity", [0.03, 0.1, 0.5, 0.97])
def test_masks_have_exactly_the_requested_density_in_every_layer(capacity):
    bench = blobs(n_tasks=3, per_class=16)
    model = _mlp(bench, hidden=(37, 23))
    method = make_method("wsn", capacity=capacity)
    fit(model, bench, method, epochs=1, optimizer="adam", lr=0.01, batch_size=16)
    for name, layer in method.layers.items():
        n = raw_weight(layer).numel()
        for t in range(3):
            assert int(method.bank.get(t, name).sum()) == density_count(n, capacity)
        # the training forward uses exactly that many weights too (W * top-k(|s|))
        w_eff = layer.weight
        assert int((w_eff != 0).sum()) == density_count(n, capacity)
        assert mask_of(layer).mask is None
    line = method.reuse_report()["layers"][next(iter(method.layers))]
    assert all(k == r + w for k, r, w in zip(line["kept"], line["reused"], line["new"]))


def test_union_grows_monotonically_and_is_the_or_of_the_task_masks():
    bench = blobs(n_tasks=5, per_class=16)
    model = _mlp(bench, hidden=(40, 40))
    method = make_method("wsn", capacity=0.2)
    r = fit(model, bench, method, epochs=2, optimizer="adam", lr=0.01, batch_size=16)
    cap = r.metrics()["method"]["capacity"]
    reuse = r.metrics()["method"]["reuse"]
    for name in method.layers:
        prev = torch.zeros_like(method.bank.get(0, name))
        for t in range(5):
            m = method.bank.get(t, name)
            union = method.bank.union(name, range(t + 1))
            assert torch.equal(union, prev | m)
            assert bool((prev <= union).all())  # M_{t-1} is inside M_t
            assert int((m & prev).sum()) == reuse["layers"][name]["reused"][t]
            assert int(union.sum()) == reuse["layers"][name]["used_after"][t]
            prev = union
        fracs = cap["layers"][name]["used_frac_after_task"]
        assert fracs == sorted(fracs) and len(fracs) == 5
    # shared scores: later tasks reuse earlier weights heavily
    assert reuse["total"]["reused"][-1] > 0.5 * reuse["total"]["kept"][-1]


def test_stored_codes_decode_to_the_stored_masks_in_task_order():
    bench = blobs(n_tasks=4, per_class=16)
    model = _mlp(bench, hidden=(64, 48))
    method = make_method("wsn", capacity=0.1)
    fit(model, bench, method, epochs=1, optimizer="adam", lr=0.01, batch_size=16)
    for name, layer in method.layers.items():
        known = torch.zeros(raw_weight(layer).shape, dtype=torch.bool)
        for t in range(4):  # a decoder that holds only the codes rebuilds M_{t-1}, then m_t
            m = decode_mask(method.bank.code(t, name), known.shape, given=known)
            assert torch.equal(m, method.bank.get(t, name))
            known |= m
        assert torch.equal(known, method.used(name))


def test_straight_through_gradient_reaches_the_scores_and_old_weights_get_none():
    bench = blobs(n_tasks=2, per_class=24)
    model = _mlp(bench)
    method = WSN(capacity=0.3)
    method.setup(model, None)
    first = bench[0]  # learn task 0 with a loop of one's own
    method.before_task(first)
    opt = torch.optim.Adam(method.trainable_parameters(first), lr=0.01)
    for batch in method.batches(first, 16, torch.Generator().manual_seed(0)):
        loss = method.loss(batch, first)
        opt.zero_grad()
        loss.backward()
        method.after_backward(batch, first)
        opt.step()
        method.after_step(batch, first)
    method.after_task(first)
    task = bench[1]
    method.before_task(task)
    batch = next(method.batches(task, 16, torch.Generator().manual_seed(0)))
    model.zero_grad(set_to_none=True)
    method.loss(batch, task).backward()
    layer = model.backbone.layers[1]
    scores, w = mask_of(layer).scores, raw_weight(layer)
    m = mask_of(layer).current_mask()
    # reference: the same forward with the effective weight as a leaf
    x = torch.relu(model.backbone.layers[0](batch.x)).detach()
    w_eff = layer.weight.detach().requires_grad_(True)
    loss = F.cross_entropy(model.heads[1](torch.relu(F.linear(x, w_eff))), batch.y)
    (g,) = torch.autograd.grad(loss, w_eff)
    # Algorithm 1 line 7: dL/ds = sign(s) * dL/d(W*m) * W, for every score (inside m or not)
    assert torch.allclose(scores.grad, torch.sign(scores) * g * w, atol=1e-7)
    assert bool((scores.grad[~m] != 0).any())
    # line 5: dL/dW = dL/d(W*m) * m
    assert torch.allclose(w.grad, g * m, atol=1e-7)
    # line 6: after after_backward, no gradient under M_{t-1}
    method.after_backward(batch, task)
    old = method.used("layers.1")
    assert bool(old.any()) and bool((w.grad[old] == 0).all())
    assert torch.allclose(w.grad[~old], (g * m)[~old], atol=1e-7)


def test_scores_are_shared_across_tasks_unless_reset():
    bench = blobs(n_tasks=2, per_class=16)
    for reset in (False, True):
        model = _mlp(bench)
        method = WSN(capacity=0.3, reset_scores=reset)
        method.setup(model, None)
        method.before_task(bench[0])
        method.after_task(bench[0])
        before = {n: s.detach().clone() for n, s in method.scores().items()}
        method.before_task(bench[1])
        same = all(torch.equal(before[n], s) for n, s in method.scores().items())
        assert same is (not reset)


def test_capacity_and_reuse_reports_in_metrics_json(tmp_path):
    bench = blobs(n_tasks=3, per_class=16)
    model = _mlp(bench, hidden=(100, 100))
    method = make_method("wsn", capacity=0.05)
    fit(model, bench, method, epochs=1, optimizer="adam", lr=0.01, batch_size=16, run_dir=tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())["method"]
    assert saved["capacity"] == method.capacity_report()
    tot = saved["capacity"]["total"]
    n = sum(raw_weight(layer).numel() for layer in method.layers.values())
    encoded = sum(len(method.bank.code(t, name)) for t in range(3) for name in method.layers)
    assert tot["weights"] == n and tot["mask_bytes_encoded"] == encoded
    assert tot["mask_bits"] == 3 * n
    assert tot["cap"] == pytest.approx((tot["used"] + encoded / 4) / n, abs=1e-6)
    assert tot["cap_raw"] == pytest.approx((tot["used"] + 3 * n / 32) / n, abs=1e-6)
    assert tot["cap"] < tot["cap_raw"]  # a 5% mask codes well below 1 bit per weight
    reuse = saved["reuse"]["total"]
    assert reuse["raw_bits"] == [n] * 3
    assert sum(reuse["code_bits"]) == 8 * encoded
    assert (
        reuse["kept"]
        == [sum(density_count(raw_weight(x).numel(), 0.05) for x in method.layers.values())] * 3
    )


def test_alexnet_conv_layers_stats_free_batchnorm_zero_forgetting():
    bench = _tiny_images(n_tasks=3)
    torch.manual_seed(0)
    backbone = AlexNet(
        (1, 16, 16), nhid=32, drop1=0.0, drop2=0.0, batch_norm="stats_free", bias=False
    )
    model = ContinualModel(backbone, [2, 2, 2])
    method = make_method("wsn", capacity=0.1)
    _, logits, _ = _run_tracked(
        model, bench, method, epochs=1, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.01
    )
    assert set(method.layers) == {"c1", "c2", "c3", "fc1", "fc2"}
    for i in range(1, 3):
        for j in range(i):
            assert torch.equal(logits[i][j], logits[j][j])


def test_refuses_shared_head_stateful_batchnorm_and_bad_capacity():
    bench = blobs(n_tasks=2)
    torch.manual_seed(0)
    shared = ContinualModel(MLP((8,), hidden=(8,)), bench.classes_per_task, "shared")
    with pytest.raises(ValueError, match="head"):
        WSN().setup(shared, None)
    bn = ContinualModel(AlexNet((1, 16, 16), nhid=8, batch_norm="affine"), [2, 2])
    with pytest.raises(ValueError, match="normalisation"):
        WSN().setup(bn, None)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="capacity"):
            WSN(capacity=bad)


class _StatsFreeBNNet(nn.Module):
    """Linear -> statistics-free BatchNorm -> ReLU, as WSN's official nets."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 16, bias=False),
            nn.BatchNorm1d(16, affine=False, track_running_stats=False),
            nn.ReLU(),
        )
        self.out_features = 16

    def forward(self, x):
        return self.net(x.flatten(1))


def _bn_run(task_norm: bool):
    """WSN on two tasks; after task 0: task 0's logits (whole test set, and one sample at a
    time) and, with ``task_norm``, the rows of running statistics."""
    from retain.core.task_norm import TaskBatchNorm

    bench = blobs(n_tasks=2)
    x = bench[0].x_test
    torch.manual_seed(0)
    model = ContinualModel(_StatsFreeBNNet(), bench.classes_per_task)
    wsn = make_method("wsn", capacity=0.5, task_norm=task_norm)
    after0 = {}

    def snapshot(task_index, result):
        if task_index == 0:
            norms = [m for m in model.modules() if isinstance(m, TaskBatchNorm)]
            after0["rows"] = [n.running_mean.clone() for n in norms]
            after0["whole"] = wsn.predict(x, task_id=0)
            after0["pairs"] = torch.cat(
                [wsn.predict(x[i : i + 2], task_id=0) for i in range(0, len(x), 2)]
            )

    fit(model, bench, wsn, epochs=3, lr=0.1, batch_size=16, on_task_end=snapshot)
    return model, wsn, x, after0


def test_task_norm_keeps_each_tasks_statistics_and_frees_predictions_from_the_batch():
    """``task_norm``: the statistics-free BatchNorm becomes one with a row of running
    statistics per task; task 0's row is written while task 0 trains and never after, its
    predictions do not depend on the other samples of the test batch, and they are
    bit-identical after task 1. Without it, a sample's logits change with its batch."""
    from retain.core.task_norm import TaskBatchNorm

    model, wsn, x, after0 = _bn_run(task_norm=True)
    (norm,) = [m for m in model.modules() if isinstance(m, TaskBatchNorm)]
    (rows,) = after0["rows"]
    assert not torch.equal(rows[0], torch.zeros(16))  # written by task 0
    assert torch.equal(rows[1], torch.zeros(16))  # task 1 not trained yet
    assert torch.allclose(after0["whole"], after0["pairs"], atol=1e-6)
    assert torch.equal(norm.running_mean[0], rows[0])  # task 1 left task 0's row alone
    assert not torch.equal(norm.running_mean[1], torch.zeros(16))
    assert torch.equal(wsn.predict(x, task_id=0), after0["whole"])

    _, _, _, plain = _bn_run(task_norm=False)
    assert plain["rows"] == []
    assert not torch.allclose(plain["whole"], plain["pairs"], atol=1e-3)  # batch statistics
