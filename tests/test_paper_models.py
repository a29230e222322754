"""The WSN LeNets and TinyNet, and the Eidetic ResNet-50: layouts, parameter counts against the
papers' official code, and WSN / PackNet / Eidetic wrapping them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retain.core.neuron_graph import trace
from retain.data import Benchmark, make_tasks
from retain.engine import fit
from retain.methods import make_method
from retain.models import (
    MODEL_DESCRIPTIONS,
    Bottleneck,
    ContinualModel,
    LargeLeNet,
    LeNet,
    ResNet18,
    ResNet50,
    TinyNet,
    build_backbone,
)
from retain.smoke import overlay


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("name", "shape", "out", "count"),
    [
        # WSN/GPM LeNet, 3x32x32 (CIFAR-100 Superclass): 3*20*25 + 20*50*25 + 3200*800 + 800*500
        ("lenet", (3, 32, 32), 500, 1500 + 25000 + 2_560_000 + 400_000),
        # WSN SubnetLeNet_Large, 1x32x32 (Omniglot): 64*25 + 64*128*25 + 8192*2500 + 2500*1500
        ("lenet-large", (1, 32, 32), 1500, 1600 + 204_800 + 20_480_000 + 3_750_000),
        # WSN TinyNet, 3x64x64: 3*160*9 + 3 * 160*160*9 + 2560*640 + 640*640
        ("tinynet", (3, 64, 64), 640, 4320 + 691_200 + 1_638_400 + 409_600),
        # torchvision ResNet-50 (25,557,032) less fc (2,049,000) and 7x7 -> 3x3 stem (-7680)
        ("resnet50", (3, 32, 32), 2048, 23_500_352),
    ],
)
def test_paper_layouts_output_shape_and_parameter_count(name, shape, out, count):
    torch.manual_seed(0)
    model = build_backbone(name, shape).eval()
    assert model.out_features == out
    assert model(torch.randn(3, *shape)).shape == (3, out)
    assert n_params(model) == count
    assert MODEL_DESCRIPTIONS[name]


def test_lenet_feature_map_follows_the_input_size():
    assert LeNet((3, 32, 32)).fc1.in_features == 50 * 8 * 8
    assert LargeLeNet((1, 28, 28)).fc1.in_features == 128 * 7 * 7  # 28 -> 14 -> 7
    assert TinyNet((3, 32, 32)).linear1.in_features == 160 * 2 * 2
    with pytest.raises(ValueError, match="2 sizes"):
        LeNet((3, 32, 32), channels=(8,))
    with pytest.raises(ValueError, match="image"):
        TinyNet((784,))


@pytest.mark.parametrize("cls", [LeNet, LargeLeNet, TinyNet])
def test_official_variant_is_bias_free_without_bn_and_options_add_them(cls):
    plain = cls((1, 32, 32))
    assert all(not name.endswith("bias") for name, _ in plain.named_parameters())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    with_bias = cls((1, 32, 32), bias=True)
    assert n_params(with_bias) > n_params(plain)
    free = cls((1, 32, 32), batch_norm="stats_free")
    bns = [m for m in free.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not m.affine and not m.track_running_stats for m in bns)
    assert n_params(free) == n_params(plain)
    affine = cls((1, 32, 32), batch_norm="affine")
    assert n_params(affine) > n_params(plain)


def test_resnet50_bottleneck_stages_and_eidetic_skip_convs():
    net = ResNet50((3, 32, 32))
    assert [len(s) for s in net.stages] == [3, 4, 6, 3]
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert [b.has_projection for b in net.layer2] == [True, False, False, False]
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv3.out_channels == 512
    skip = ResNet50((3, 32, 32), skip_conv=True)
    assert all(b.has_projection for s in skip.stages for b in s)
    # one 1x1 conv + BN per identity skip: 2 x 256, 3 x 512, 5 x 1024, 2 x 2048 channels
    extra = sum(k * (c * c + 2 * c) for k, c in [(2, 256), (3, 512), (5, 1024), (2, 2048)])
    assert n_params(skip) - n_params(net) == extra
    block = Bottleneck(8, 2)  # 8 == 4 * 2 channels: identity unless asked
    assert not block.has_projection and Bottleneck(8, 2, skip_conv=True).has_projection


def test_resnet18_imagenet_stem_and_skip_convs():
    net = ResNet18((3, 224, 224), stem="imagenet")
    # torchvision resnet18 (11,689,512) less its fc (512 * 1000 + 1000)
    assert n_params(net) == 11_176_512
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert isinstance(net.pool, nn.MaxPool2d) and isinstance(
        ResNet18((3, 32, 32)).pool, nn.Identity
    )
    sizes = {}
    for name in ("layer1", "layer4"):
        getattr(net, name).register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, out.shape[-1])
        )
    with torch.no_grad():
        net.eval()(torch.randn(1, 3, 224, 224))
    assert sizes == {"layer1": 56, "layer4": 7}  # 224 -> 112 (conv) -> 56 (pool) ... -> 7
    skip = ResNet18((3, 224, 224), stem="imagenet", skip_conv=True)
    assert all(b.has_projection for s in skip.stages for b in s)
    # one 1x1 conv + BN on each of the 5 identity skips: 2 x 64, 128, 256, 512 channels
    extra = sum(k * (c * c + 2 * c) for k, c in [(2, 64), (1, 128), (1, 256), (1, 512)])
    assert n_params(skip) - n_params(net) == extra
    with pytest.raises(ValueError, match="unknown stem"):
        ResNet18((3, 32, 32), stem="vit")


def test_eidetic_traces_resnet50_skip_convs_into_merged_groups():
    graph = trace(ResNet50((3, 16, 16), nf=4, skip_conv=True))
    names = {layer.name for layer in graph.layers}
    assert "layer1.1.shortcut.0" in names and "layer4.2.conv3" in names


def _images(n_tasks: int, shape: tuple[int, int, int], per_class: int = 8) -> Benchmark:
    g = torch.Generator().manual_seed(0)
    splits = []
    for _ in range(n_tasks):
        parts = []
        for n in (per_class, per_class // 2):
            y = torch.arange(2).repeat_interleave(n)
            parts += [torch.randn(2 * n, *shape, generator=g) + y.view(-1, 1, 1, 1), y]
        splits.append(tuple(parts))
    tasks = make_tasks(splits, [[2 * t, 2 * t + 1] for t in range(n_tasks)])
    return Benchmark("images", tasks, shape)


@pytest.mark.parametrize(
    ("method", "name", "options", "shape"),
    [
        ("wsn", "lenet", {"channels": (4, 6), "hidden": (16, 8)}, (3, 16, 16)),
        ("wsn", "lenet-large", {"channels": (4, 6), "hidden": (16, 8)}, (1, 16, 16)),
        ("wsn", "tinynet", {"channels": 8, "hidden": 16, "batch_norm": "stats_free"}, (3, 32, 32)),
        ("packnet", "lenet", {"channels": (4, 6), "hidden": (16, 8)}, (3, 16, 16)),
        ("packnet", "tinynet", {"channels": 8, "hidden": 16}, (3, 32, 32)),
    ],
)
def test_wsn_and_packnet_wrap_the_paper_nets_without_forgetting(method, name, options, shape):
    bench = _images(3, shape)
    torch.manual_seed(0)
    model = ContinualModel(build_backbone(name, shape, **options), bench.classes_per_task)
    m = make_method(method)
    seen: list[list[torch.Tensor]] = []

    def on_end(i, _result):
        model.eval()
        seen.append([m.predict(bench[j].x_test, task_id=j).clone() for j in range(i + 1)])

    fit(model, bench, m, epochs=1, batch_size=8, optimizer="adam", lr=0.01, on_task_end=on_end)
    masked = {n for n, mod in model.backbone.named_modules() if isinstance(mod, nn.Conv2d)}
    assert masked and masked <= set(m.layers)
    for i in range(1, 3):
        for j in range(i):
            assert torch.equal(seen[i][j], seen[j][j]), f"{name}: task {j} changed after {i}"


@pytest.mark.parametrize(
    ("model", "args", "expect"),
    [
        ("lenet", {}, {"channels": [8, 8], "hidden": [32, 32]}),
        ("lenet-large", {"hidden": [2500, 16]}, {"channels": [8, 8], "hidden": [32, 16]}),
        ("tinynet", {"bias": False}, {"bias": False, "channels": 16, "hidden": 32}),
        ("resnet50", {"skip_conv": True}, {"skip_conv": True, "nf": 4}),
    ],
)
def test_smoke_overlay_narrows_the_new_nets_keeping_per_layer_lengths(model, args, expect):
    out = overlay({"model": model, "model_args": args, "method": "wsn"})
    assert out["model_args"] == expect
    build_backbone(model, (3, 32, 32), **out["model_args"])  # still a valid configuration
