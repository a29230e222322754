"""Eidetic on a user's own model and loop (Listing 1), tracing, routing, resume, reports."""

import json

import pytest
import torch
from torch import nn

from retain.core.neuron_graph import NeuronGraph, TraceError, trace
from retain.core.structured import format_capacity
from retain.engine import fit
from retain.methods import make_method
from retain.methods.eidetic import Eidetic
from retain.models import MLP, ContinualModel
from retain.models.alexnet import AlexNet
from tests.synthetic import blobs


def _cnn():
    """A plain user CNN: conv-BN-ReLU-pool, flatten, Linear (4 channels x 16 positions)."""
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 12),
        nn.ReLU(),
    )
    net.out_features = 12
    return net


def test_trace_plain_cnn_and_alexnet():
    g = trace(_cnn())
    assert [(s.name, s.group, s.inputs, s.expand) for s in g.layers] == [
        ("0", "0", None, 1),
        ("5", "5", "0", 16),
    ]
    assert [(n.name, n.group) for n in g.norms] == [("1", "0")]
    assert g.features == "5"
    alex = trace(AlexNet((3, 32, 32), nhid=16, batch_norm="affine"))
    fc1 = next(s for s in alex.layers if s.name == "fc1")
    assert fc1.inputs == "c3" and fc1.expand > 1 and alex.features == "fc2"


def test_trace_refuses_what_it_cannot_map():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], 1)

    with pytest.raises(TraceError):
        trace(Cat())


def _image_tasks(n_tasks=2, per_class=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(2 * n_tasks, 1, 8, 8, generator=g)
    tasks = []
    for t in range(n_tasks):
        xs = [
            centers[2 * t + c] + 0.7 * torch.randn(per_class, 1, 8, 8, generator=g) for c in (0, 1)
        ]
        ys = [torch.full((per_class,), c) for c in (0, 1)]
        tasks.append((torch.cat(xs), torch.cat(ys)))
    return tasks


def test_listing1_own_loop_on_a_user_cnn_with_adamw():
    torch.manual_seed(0)
    tasks = _image_tasks()
    model = ContinualModel(_cnn(), [2, 2])
    eid = Eidetic(pruning="l1", step=0.25, tolerance=0.05, max_recovery_epochs=2, patience=2)
    eid.setup(model)
    probe = tasks[0][0][:20]
    outs = []
    for t, data in enumerate(tasks):
        eid.prepare_for_task(t)
        opt = torch.optim.AdamW(eid.task_parameters(t), lr=0.02, weight_decay=0.2)
        summary = eid.fit_task(data, opt, batch_size=16, max_epochs=6)
        eid.finish_task(t)
        model.eval()
        outs.append(eid.predict(probe, task_id=0).clone())
        assert summary["best_acc"] > 0.9
    assert torch.equal(outs[0], outs[1])
    assert eid.masks.check_resistance() == []
    eid.train_router(tasks, torch.optim.Adam(eid.router_parameters(), lr=0.02), max_epochs=5)
    tid, cls = eid.predict_routed(probe)
    assert tid.shape == cls.shape == (20,)
    report = eid.capacity_report()
    assert report["total"]["size"] == 4 + 12
    assert report["weights"]["layers"]["5"]["weights"] == 64 * 12
    assert "router" in format_capacity(report)


def test_declared_graph_for_a_model_with_batchnorm1d():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.bn1 = nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16)
            self.fc2, self.bn2 = nn.Linear(16, 16, bias=False), nn.BatchNorm1d(16)
            self.out_features = 16

        def forward(self, x):
            return self.bn2(self.fc2(self.bn1(self.fc1(x)).relu())).relu()

    g = NeuronGraph().layer("fc1").norm("bn1", "fc1").layer("fc2", inputs="fc1")
    g.norm("bn2", "fc2").output("fc2")
    assert trace(Net()) == g
    bench = blobs(n_tasks=2, per_class=40)
    torch.manual_seed(0)
    model = ContinualModel(Net(), bench.classes_per_task)
    eid = make_method("eidetic", graph=g, step=0.3, tolerance=0.05, route=False)
    outs = []
    fit(
        model,
        bench,
        eid,
        epochs=4,
        batch_size=16,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.05,
        on_task_end=lambda i, r: outs.append(eid.predict(bench[0].x_test, task_id=0).clone()),
    )
    assert torch.equal(outs[0], outs[1])
    assert eid.history[1]["iterations"] == 0  # the last task is not pruned without a router


def test_routing_on_separable_blobs():
    bench = blobs(n_tasks=3, per_class=60)
    torch.manual_seed(1)
    model = ContinualModel(MLP((8,), hidden=(32, 32)), bench.classes_per_task)
    eid = make_method("eidetic", step=0.2, tolerance=0.02, max_recovery_epochs=2)
    r = fit(model, bench, eid, epochs=10, batch_size=16, optimizer="adam", lr=0.01)
    assert eid.router_trained and eid.history[-1]["phase"] == 3
    assert eid.router_accuracy["test"] > 0.95
    aware, routed = r.task_aware.rows[-1], r.task_agnostic.rows[-1]
    assert min(aware) > 0.95
    assert min(routed) > 0.9
    # routing never beats the oracle by more than chance: routed = correct task and class
    x, t = bench[2].x_test, bench[2].id
    tid, cls = eid.predict_routed(x)
    agn = eid.predict(x)  # task-agnostic logits: -inf outside the routed task's head
    assert torch.equal(agn.argmax(1), model.class_offsets[tid] + cls)
    assert (tid == t).float().mean() > 0.9
    json.dumps(r.metrics())  # extra metrics are JSON-serialisable
    assert r.metrics()["method"]["capacity"]["total"]["router"] >= 0


def test_configs_resolve():
    from pathlib import Path

    from retain.experiment import resolve

    for name in ("eidetic-pmnist", "eidetic-split-fmnist"):
        config = resolve(Path(__file__).parent.parent / "configs" / f"{name}.yaml")
        method = make_method(config.method, **config.method_args)
        assert isinstance(method, Eidetic)


def test_eidetic_uses_the_runs_augmentation_and_mixed_precision():
    """Eidetic trains with its own loop; it still gets the run's batched augmentation (the
    inputs it trains on are not the stored images) and its autocast (bf16 activations)."""
    from retain.data import Benchmark, make_tasks

    g = torch.Generator().manual_seed(0)
    splits = []
    for _ in range(2):
        x = torch.rand(32, 1, 8, 8, generator=g)
        y = torch.arange(32) % 2
        splits.append((x, y, x[:8], y[:8]))
    bench = Benchmark("images", make_tasks(splits, [[0, 1], [2, 3]]), (1, 8, 8))
    stored = torch.cat([t.x_train for t in bench]).flatten(1)
    seen = {}

    def record(module, args, out):
        if module.training:
            seen.setdefault("inputs", []).append(args[0].detach().flatten(1))
            seen.setdefault("dtypes", set()).add(out.dtype)
            if eid.phase == bench.n_tasks:  # the router phase
                seen.setdefault("router", []).append(args[0].detach().flatten(1))

    for augment, amp in (({}, "off"), ({"crop": 2, "flip": True}, "bf16")):
        seen.clear()
        torch.manual_seed(0)
        model = ContinualModel(MLP((1, 8, 8), hidden=(16,)), bench.classes_per_task)
        handle = model.backbone.register_forward_hook(record)
        eid = make_method("eidetic", step=0.3, patience=1, max_recovery_epochs=1)
        fit(model, bench, eid, epochs=1, batch_size=16, augment=augment, amp=amp)
        handle.remove()
        inputs = torch.cat(seen["inputs"])
        exact = "donot_use_mm_for_euclid_dist"
        is_stored = (
            (torch.cdist(inputs, stored, compute_mode=exact).min(1).values < 1e-6).float().mean()
        )
        routed = torch.cat(seen["router"])
        routed_stored = (
            (torch.cdist(routed, stored, compute_mode=exact).min(1).values < 1e-6).float().mean()
        )
        if augment:
            assert is_stored < 0.5 and seen["dtypes"] == {torch.bfloat16}
            # the router's batches go through Trainer.run_epoch too: augmented (changed in
            # the redesign: its own loop used to train the router on the stored images)
            assert routed_stored < 0.5
        else:
            assert is_stored == 1.0 and seen["dtypes"] == {torch.float32}
            assert routed_stored == 1.0
