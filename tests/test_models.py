"""Backbones, the registry and ContinualModel's head layouts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from retain.models import (
    MLP,
    MODEL_DESCRIPTIONS,
    MODELS,
    AlexNet,
    BasicBlock,
    ContinualModel,
    ReducedResNet18,
    ResNet18,
    build_backbone,
    build_model,
    describe_models,
    model_options,
)

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- MLP


@pytest.mark.parametrize("shape", [*SHAPES, 784])
def test_mlp_flattens_any_shape(shape):
    net = MLP(shape, hidden=(16, 8))
    x = torch.randn(3, *((shape,) if isinstance(shape, int) else shape))
    assert net(x).shape == (3, 8)
    assert net.out_features == 8


def test_mlp_784_400_400_parameter_count():
    net = MLP((1, 28, 28))
    assert net.out_features == 400
    assert n_params(net) == (784 * 400 + 400) + (400 * 400 + 400) == 474_400
    assert n_params(MLP(784, hidden=(100, 100), bias=False)) == 784 * 100 + 100 * 100
    model = ContinualModel(net, [2] * 5)
    assert n_params(model) == 474_400 + 5 * (400 * 2 + 2) == 478_410


def test_mlp_dropout_and_empty_hidden():
    net = MLP(10, hidden=(32,), dropout=0.5)
    assert any(isinstance(m, nn.Dropout) for m in net.modules())
    net.eval()
    x = torch.randn(4, 10)
    assert torch.equal(net(x), net(x))
    assert not any(isinstance(m, nn.Dropout) for m in MLP(10, hidden=(32,)).modules())
    identity = MLP((2, 5), hidden=())
    assert identity.out_features == 10
    assert torch.equal(identity(x.view(4, 2, 5)), x)


# --------------------------------------------------------------------------- AlexNet


@pytest.mark.parametrize(
    ("shape", "kernels", "count"),
    [((1, 28, 28), (3, 2, 2), 6_460_416), ((3, 32, 32), (4, 3, 2), 6_503_872)],
)
def test_alexnet_layout_and_parameter_count(shape, kernels, count):
    net = AlexNet(shape)
    assert net.kernel_sizes == kernels
    assert net.flat_features == 256 * 2 * 2
    assert net.out_features == 2048
    c = shape[0]
    expected = (
        (c * 64 * kernels[0] ** 2 + 64)
        + (64 * 128 * kernels[1] ** 2 + 128)
        + (128 * 256 * kernels[2] ** 2 + 256)
        + (1024 * 2048 + 2048)
        + (2048 * 2048 + 2048)
    )
    assert n_params(net) == expected == count


@pytest.mark.parametrize("batch_norm", [None, "affine", "stats_free"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_alexnet_output_shape(shape, batch_norm):
    net = AlexNet(shape, nhid=32, batch_norm=batch_norm)
    assert net(torch.randn(2, *shape)).shape == (2, 32)


def test_alexnet_too_small_input():
    with pytest.raises(ValueError, match="too small"):
        AlexNet((1, 8, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        AlexNet((784,))


def test_alexnet_wsn_variant_has_no_bias_and_no_bn_parameters():
    net = AlexNet((3, 32, 32), nhid=32, batch_norm="stats_free", bias=False)
    names = [name for name, _ in net.named_parameters()]
    assert names == ["c1.weight", "c2.weight", "c3.weight", "fc1.weight", "fc2.weight"]
    assert list(net.buffers()) == []


# --------------------------------------------------------------------------- stats-free BN


def test_stats_free_batch_norm_uses_batch_statistics_in_eval():
    torch.manual_seed(0)
    for net, shape in [
        (AlexNet((3, 32, 32), nhid=16, drop1=0.0, drop2=0.0, batch_norm="stats_free"), (3, 32, 32)),
        (ResNet18((1, 8, 8), nf=4, batch_norm="stats_free"), (1, 8, 8)),
    ]:
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bns
        assert all(n_params(m) == 0 and list(m.buffers()) == [] for m in bns)
        x = torch.randn(8, *shape) * 3 + 1
        train_out = net.train()(x)
        eval_out = net.eval()(x)
        torch.testing.assert_close(eval_out, train_out)
        # batch statistics: the output for a sample depends on the rest of the batch
        assert not torch.allclose(net(x[:4])[0], eval_out[0])


# --------------------------------------------------------------------------- ResNets


def test_resnet18_parameter_count_with_10_way_head():
    model = build_model("resnet18", (3, 32, 32), [10], nf=64)
    assert model.backbone.out_features == 512
    assert n_params(model) == 11_173_962  # the usual "11.17M" CIFAR ResNet-18


@pytest.mark.parametrize("shape", SHAPES)
def test_resnet_output_shapes(shape):
    x = torch.randn(2, *shape)
    assert ResNet18(shape, nf=4)(x).shape == (2, 32)
    assert ReducedResNet18(shape, nf=4)(x).shape == (2, 8)


def test_resnet18_layout_and_init():
    net = ResNet18((3, 32, 32), nf=8)
    assert [s[0].conv1.out_channels for s in net.stages] == [8, 16, 32, 64]
    assert [s[0].conv1.stride for s in net.stages] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert [[b.has_projection for b in s] for s in net.stages] == [
        [False, False],
        [True, False],
        [True, False],
        [True, False],
    ]
    torch.manual_seed(0)
    big = ResNet18((3, 32, 32), nf=64)
    w = big.layer4[1].conv2.weight  # fan_out = 512 * 9
    assert abs(w.std().item() - math.sqrt(2 / (512 * 9))) < 0.05 * math.sqrt(2 / (512 * 9))
    for m in big.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_reduced_resnet18_layout():
    net = ReducedResNet18((3, 28, 28))
    assert net.out_features == 64
    assert (net.conv1.in_channels, net.conv1.out_channels, net.conv1.stride) == (3, 32, (1, 1))
    assert len(net.stages) == 2 and all(len(s) == 2 for s in net.stages)
    layout = [
        [(b.conv1.in_channels, b.conv2.out_channels, b.conv1.stride[0]) for b in s]
        for s in net.stages
    ]
    assert layout == [[(32, 32, 1), (32, 32, 1)], [(32, 64, 2), (64, 64, 1)]]
    assert [[b.has_projection for b in s] for s in net.stages] == [[False, False], [True, False]]
    conv, bn = net.layer2[0].shortcut
    assert (conv.kernel_size, conv.stride, conv.out_channels) == ((1, 1), (2, 2), 64)
    assert isinstance(bn, nn.BatchNorm2d)
    assert n_params(net) == 169_760
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 64)


def test_basic_block_parts_allow_gating_after_bn():
    """The forward a gating method (Dynamos) would write, with all-one gates, is the block."""
    torch.manual_seed(0)
    block = BasicBlock(4, 8, stride=2).eval()
    x = torch.randn(2, 4, 8, 8)
    a1 = torch.ones(2, 8, 1, 1)
    a2 = torch.ones(2, 8, 1, 1)
    out1 = (block.bn1(block.conv1(x)) * a1).relu()
    out = (block.bn2(block.conv2(out1)) * a2 + block.shortcut(x) * a2).relu()
    torch.testing.assert_close(out, block(x))


# --------------------------------------------------------------------------- ContinualModel


def test_task_aware_logits_are_slices_of_the_concatenated_head():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), [2, 3, 2], hidden=[16]).eval()
    x = torch.randn(5, 1, 8, 8)
    full = model(x)
    assert full.shape == (5, 7)
    start = 0
    for t, c in enumerate(model.classes_per_task):
        torch.testing.assert_close(model(x, t), full[:, start : start + c])
        start += c
    torch.testing.assert_close(model(x, upto=2), full[:, :5])


def test_own_task_mask_and_global_labels():
    model = build_model("mlp", 4, [2, 3, 2], hidden=[8])
    task_ids = torch.tensor([0, 1, 2, 1])
    mask = model.own_task_mask(task_ids, upto=3)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 1, 1],
            [0, 0, 1, 1, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    y = torch.tensor([1, 0, 1, 2])
    assert model.global_labels(y, task_ids).tolist() == [1, 2, 6, 4]
    # masking the other tasks' logits gives task-aware predictions in one pass
    x = torch.randn(4, 4)
    masked = model(x).masked_fill(~mask, float("-inf"))
    for i, t in enumerate(task_ids.tolist()):
        local = model(x[i : i + 1], t).argmax(1).item()
        assert masked[i].argmax().item() == model.class_offsets[t].item() + local

    shared = build_model("mlp", 4, [10] * 3, head="shared", hidden=[8])
    assert len(shared.heads) == 1
    assert shared(x).shape == (4, 10)
    assert torch.equal(shared.global_labels(y, task_ids), y)


# --------------------------------------------------------------------------- registry


def test_registry_names_and_descriptions():
    assert list(MODELS) == [
        "mlp",
        "alexnet",
        "resnet18",
        "reduced-resnet18",
        "resnet50",
        "lenet",
        "lenet-large",
        "tinynet",
    ]
    assert set(MODEL_DESCRIPTIONS) == set(MODELS)
    described = describe_models()
    assert [name for name, _ in described] == list(MODELS)
    assert all(desc and "\n" not in desc for _, desc in described)
    assert model_options("mlp") == ["hidden", "dropout", "bias"]


@pytest.mark.parametrize(
    ("name", "shape", "options", "out"),
    [
        ("mlp", [1, 28, 28], {"hidden": [32, 16]}, 16),
        ("alexnet", (3, 32, 32), {"nhid": 32, "batch_norm": "stats_free"}, 32),
        ("resnet18", (3, 32, 32), {"nf": 4}, 32),
        ("reduced-resnet18", (1, 28, 28), {"nf": 4}, 8),
    ],
)
def test_build_by_name_is_deterministic_under_a_seed(name, shape, options, out):
    torch.manual_seed(123)
    a = build_model(name, shape, [2] * 5, **options)
    torch.manual_seed(123)
    b = build_model(name, shape, [2] * 5, **options)
    assert a.backbone.out_features == out
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.eval()(torch.randn(2, *shape)).shape == (2, 10)


def test_yaml_list_hidden_is_accepted():
    net = build_backbone("mlp", [1, 28, 28], hidden=[400, 400])
    assert net.hidden == (400, 400)
    assert n_params(net) == 474_400


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'vgg'") as err:
        build_backbone("vgg", (3, 32, 32))
    for name in MODELS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet-18", (3, 32, 32), [2])


def test_unknown_option():
    with pytest.raises(ValueError, match="'hiden'") as err:
        build_model("mlp", (1, 28, 28), [2], hiden=[10])
    assert "accepted: hidden, dropout, bias" in str(err.value)
    with pytest.raises(ValueError, match="'nf' for model 'alexnet'"):
        build_backbone("alexnet", (3, 32, 32), nf=32)
    with pytest.raises(ValueError, match="batch_norm"):
        build_backbone("resnet18", (3, 32, 32), nf=4, batch_norm="group")
