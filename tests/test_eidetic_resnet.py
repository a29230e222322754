"""Eidetic Learning on a ResNet with BatchNorm, identity and 1x1-conv shortcuts."""

import pytest
import torch

from retain.core.neuron_graph import trace
from retain.core.structured import FREE
from retain.data import Benchmark, make_tasks
from retain.engine import fit
from retain.methods import make_method
from retain.models import ContinualModel, ReducedResNet18, ResNet18


def image_blobs(n_tasks=3, per_class=32, seed=0, shape=(3, 8, 8)):
    """Two noisy class templates per task, as small images."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(2 * n_tasks, *shape, generator=g)
    splits = []
    for t in range(n_tasks):
        parts = []
        for n in (per_class, per_class // 2):
            xs, ys = [], []
            for local in range(2):
                xs.append(centers[2 * t + local] + 0.8 * torch.randn(n, *shape, generator=g))
                ys.append(torch.full((n,), local, dtype=torch.long))
            parts += [torch.cat(xs), torch.cat(ys)]
        splits.append(tuple(parts))
    groups = [[2 * t, 2 * t + 1] for t in range(n_tasks)]
    return Benchmark("image-blobs", make_tasks(splits, groups), shape)


def _resnet(bench, seed=0):
    torch.manual_seed(seed)
    return ContinualModel(ReducedResNet18(bench.input_shape, nf=4), bench.classes_per_task)


def test_trace_ties_residual_groups():
    graph = trace(ReducedResNet18((3, 8, 8), nf=4))
    groups = {g: graph.members(g) for g in graph.groups}
    # identity shortcuts: the stem and every stage-1 block output are the same channels
    assert groups["conv1"] == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    # 1x1 projection: its output follows the block output, its input the block input
    assert groups["layer2.0.conv2"] == ["layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"]
    shortcut = next(s for s in graph.layers if s.name == "layer2.0.shortcut.0")
    assert shortcut.inputs == "conv1"
    assert graph.features == "layer2.0.conv2"
    norms = {n.name: n.group for n in graph.norms}
    assert norms["layer2.0.shortcut.1"] == "layer2.0.conv2"
    assert norms["layer1.1.bn2"] == "conv1"


def test_trace_imagenet_stem_and_skip_convs_untie_block_groups():
    """Eidetic's ResNet-18 (7x7 stem, max-pool, a conv on every skip): the max-pool passes the
    stem's channels through, and no block output is tied to its input any more."""
    graph = trace(ResNet18((3, 16, 16), nf=4, stem="imagenet", skip_conv=True))
    groups = {g: graph.members(g) for g in graph.groups}
    assert groups["conv1"] == ["conv1"]
    assert groups["layer1.0.conv2"] == ["layer1.0.conv2", "layer1.0.shortcut.0"]
    assert next(s for s in graph.layers if s.name == "layer1.0.shortcut.0").inputs == "conv1"
    assert graph.features == "layer4.1.conv2"


def test_eidetic_on_the_imagenet_stem_resnet18_does_not_forget():
    bench = image_blobs(n_tasks=2, shape=(3, 16, 16))
    torch.manual_seed(0)
    backbone = ResNet18(bench.input_shape, nf=8, stem="imagenet", skip_conv=True)
    model = ContinualModel(backbone, bench.classes_per_task)
    method = make_method(
        "eidetic", pruning="l2", step=0.2, tolerance=0.2, patience=1, max_recovery_epochs=1
    )
    outputs = []

    def record(_i, _result):
        outputs.append(method.predict(bench[0].x_test, task_id=0).clone())

    fit(
        model, bench, method, epochs=4, batch_size=32, optimizer="adam", lr=0.01, on_task_end=record
    )
    assert method.history[0]["iterations"] > 0
    assert torch.equal(outputs[0], outputs[1])
    assert method.masks.check_resistance() == []


@pytest.mark.parametrize(
    "pruning,opt",
    [
        ("l1", dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01)),
        ("taylor", dict(optimizer="adamw", lr=0.01, weight_decay=0.1)),
    ],
)
def test_resnet_earlier_tasks_bit_identical_and_bn_frozen(pruning, opt):
    bench = image_blobs()
    model = _resnet(bench)
    method = make_method(
        "eidetic", pruning=pruning, step=0.25, tolerance=0.1, patience=1, max_recovery_epochs=2
    )
    outputs, bn_states = [], []

    def record(_i, _result):
        outputs.append([method.predict(t.x_test, task_id=t.id).clone() for t in bench])
        bn_states.append({k: v.clone() for k, v in model.state_dict().items()})

    result = fit(model, bench, method, epochs=4, batch_size=32, on_task_end=record, **opt)
    assert method.history[0]["iterations"] > 0 and method.history[1]["iterations"] > 0
    for i in range(3):
        for j in range(i + 1):
            assert torch.equal(outputs[i][j], outputs[-1][j]), (i, j)
    assert result.task_aware.bwt() == 0.0
    masks = method.masks
    assert masks.check_resistance() == []
    # BN statistics and affine parameters of task 0's channels never moved after task 0
    for norm in masks.norms:
        own = masks.owner[norm.spec.group] == 0
        for buf in ("running_mean", "running_var", "weight", "bias"):
            key = f"backbone.{norm.spec.name}.{buf}"
            assert torch.equal(bn_states[0][key][own], bn_states[-1][key][own]), key
    rep = method.capacity_report()
    assert rep["total"]["size"] == sum(r["size"] for r in rep["groups"])
    assert rep["total"]["free"] == sum(int((masks.owner[g] == FREE).sum()) for g in masks.groups)
