"""Slimmable layers, switchable BatchNorm and the ScrollNet scroll (retain.models.slimmable)."""

import copy

import pytest
import torch
from torch import nn

from retain.models import MLP, AlexNet, ContinualModel, ResNet18
from retain.models.slimmable import (
    FullOutput,
    SlimmableConv2d,
    SlimmableLinear,
    SwitchableBatchNorm,
    get_scroll,
    get_splits,
    make_slimmable,
    scroll,
    set_scroll,
    slimmable_modules,
    width,
)

K = 4


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return ContinualModel(MLP((1, 6, 6), hidden=(16, 12)), [3, 2]).to(dtype)


def _alexnet(dtype=torch.float32, batch_norm="affine"):
    torch.manual_seed(0)
    net = AlexNet((1, 28, 28), nhid=16, drop1=0.0, drop2=0.0, batch_norm=batch_norm)
    return ContinualModel(net, [3, 2]).to(dtype)


def _resnet(dtype=torch.float32):
    torch.manual_seed(0)
    return ContinualModel(ResNet18((3, 12, 12), nf=4), [3, 2]).to(dtype)


MODELS = {
    "mlp": (_mlp, (1, 6, 6)),
    "alexnet": (_alexnet, (1, 28, 28)),
    "resnet18": (_resnet, (3, 12, 12)),
}


def _slim(name, splits=K, dtype=torch.float32):
    build, shape = MODELS[name]
    model = make_slimmable(build(dtype), splits)
    return model, shape


def _randomise_bn(model):
    """Non-trivial BN parameters and running statistics, so permutation errors show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _active_groups(splits, k, shift):
    return {(shift + j) % splits for j in range(k)}


def _group_of(n, splits):
    return torch.arange(n) // (n // splits)


# ------------------------------------------------------------------------------ conversion
def test_conversion_keeps_parameter_objects_and_names():
    model = _alexnet()
    before = dict(model.named_parameters())
    make_slimmable(model, K)
    after = dict(model.named_parameters())
    for name, p in before.items():
        if ".bn" not in name:  # convs, linears and heads: same names, same tensors
            assert after[name] is p
    assert get_splits(model) == K
    c1, fc1 = model.backbone.c1, model.backbone.fc1
    assert isinstance(c1, SlimmableConv2d) and not c1.slice_in and c1.slice_out
    assert isinstance(fc1, SlimmableLinear) and fc1.slice_in and fc1.slice_out
    assert isinstance(model.backbone.bn1, SwitchableBatchNorm)
    assert [bn.num_features for bn in model.backbone.bn1.bns] == [16, 32, 48, 64]
    assert type(model.heads[0]) is nn.Linear  # heads untouched: they get full-layout features
    assert isinstance(model.backbone.slim_output, FullOutput)


def test_conversion_errors():
    with pytest.raises(ValueError, match="equal groups"):
        make_slimmable(ContinualModel(MLP(4, hidden=(10,)), [2]), 4)
    with pytest.raises(ValueError, match="LayerNorm"):
        make_slimmable(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)), 2)
    with pytest.raises(ValueError, match="grouped"):
        make_slimmable(nn.Sequential(nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, groups=8)), 2)
    model = make_slimmable(_mlp(), 2)
    with pytest.raises(ValueError, match="already"):
        make_slimmable(model, 2)
    with pytest.raises(ValueError, match="no channel"):
        make_slimmable(ContinualModel(MLP(4, hidden=()), [2]), 2)


@pytest.mark.parametrize("name", list(MODELS))
def test_output_shapes_at_every_width(name):
    model, shape = _slim(name)
    x = torch.randn(3, *shape)
    for k in range(1, K + 1):
        with width(model, k):
            assert model(x).shape == (3, 5)
            assert model.features(x).shape == (3, model.backbone.out_features)
    assert all(m.width == K for m in slimmable_modules(model))  # restored


def test_plain_module_with_fixed_output_classifier():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    make_slimmable(net, 2, fixed_output=["4"])
    assert not net[0].slice_in and net[0].slice_out and net[4].slice_in and not net[4].slice_out
    x = torch.randn(4, 5)
    with width(net, 1):
        assert net(x).shape == (4, 3)


# ------------------------------------------------------------------------------ widths
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_width_k_uses_exactly_its_k_groups(name, shift, k):
    """Gradients of the width-k sub-network are zero outside its k channel groups (the first
    k positions = stored groups shift..shift+k-1 mod K), for every layer and the heads' input."""
    model, shape = _slim(name)
    set_scroll(model, shift)
    active = _active_groups(K, k, shift)
    x = torch.randn(6, *shape)
    with width(model, k):
        model(x).square().sum().backward()
    checked = 0
    for m in model.modules():
        if isinstance(m, (SlimmableLinear, SlimmableConv2d)):
            g = m.weight.grad.abs()
            g = g.flatten(2).sum(2) if g.dim() > 2 else g
            if m.slice_out:
                rows = torch.tensor([int(i) in active for i in _group_of(g.shape[0], K)])
                assert g[~rows].sum() == 0
                if m.bias is not None:
                    assert m.bias.grad[~rows].abs().sum() == 0
            if m.slice_in:
                cols = torch.tensor([int(i) in active for i in _group_of(g.shape[1], K)])
                assert g[:, ~cols].sum() == 0
            assert g.sum() > 0  # the active block does learn
            checked += 1
    for head in model.heads:  # heads: input sliced (and scrolled), output not
        g = head.weight.grad.abs()
        cols = torch.tensor([int(i) in active for i in _group_of(g.shape[1], K)])
        assert g[:, ~cols].sum() == 0 and g[:, cols].sum() > 0
    assert checked >= 2


def test_narrow_width_is_the_prefix_of_the_weights():
    layer = SlimmableLinear(8, 12, splits=4)
    layer.width = 2
    w, b = layer.active_parameters()
    assert torch.equal(w, layer.weight[:6, :4]) and torch.equal(b, layer.bias[:6])
    assert w.data_ptr() == layer.weight.data_ptr()  # no copy without a wrap-around


def test_switchable_bn_keeps_separate_statistics_per_width():
    model, shape = _slim("alexnet")
    model.train()
    bns = model.backbone.bn1.bns
    x = torch.randn(8, *shape)
    for k in range(1, K + 1):
        before = [(bn.running_mean.clone(), int(bn.num_batches_tracked)) for bn in bns]
        with width(model, k):
            model(x)
        for j, bn in enumerate(bns):
            changed = not torch.equal(bn.running_mean, before[j][0])
            assert changed == (j == k - 1)
            assert int(bn.num_batches_tracked) == before[j][1] + (j == k - 1)
    # after c1 (raw input) a narrow width sees the same channels as the first of the full one;
    # after c2 (sliced input) the statistics differ: different sub-networks feed them
    assert torch.allclose(bns[0].running_mean, bns[K - 1].running_mean[: bns[0].num_features])
    bn2 = model.backbone.bn2.bns
    assert not torch.allclose(bn2[0].running_mean, bn2[K - 1].running_mean[: bn2[0].num_features])


# ------------------------------------------------------------------------------ scroll
def test_after_a_scroll_the_first_group_is_last():
    torch.manual_seed(0)
    layer = SlimmableLinear(8, 12, splits=4)
    g_out, g_in = 3, 2
    first_rows, first_cols = layer.weight[:g_out], layer.weight[:, :g_in]
    scroll([layer])
    w, b = layer.active_parameters()
    assert torch.equal(w[-g_out:, 6:], layer.weight[:g_out, :2])  # old block (0, 0) at the end
    assert torch.equal(w[-g_out:], torch.cat([first_rows[:, g_in:], first_rows[:, :g_in]], 1))
    assert torch.equal(w[:, -g_in:], torch.cat([first_cols[g_out:], first_cols[:g_out]], 0))
    assert torch.equal(b[-g_out:], layer.bias[:g_out])
    # new index i reads stored channel (i + shift) mod C: width 1 is now stored group 1
    layer.width = 1
    w1, _ = layer.active_parameters()
    assert torch.equal(w1, layer.weight[3:6, 2:4])
    scroll([layer], 3)  # modulo K: back to the start
    layer.width = 4
    assert layer.shift == 0 and layer.active_parameters()[0] is layer.weight


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_scroll_leaves_the_full_width_mlp_function_unchanged(steps):
    """Without BN, scrolling is a pure permutation of hidden channels: the full-width network
    computes the same function (float64: equal up to summation order)."""
    model, shape = _slim("mlp", dtype=torch.float64)
    x = torch.randn(16, *shape, dtype=torch.float64)
    full = model(x)
    narrow = {}
    for k in range(1, K):
        with width(model, k):
            narrow[k] = model(x)
    scroll(model, steps)
    assert get_scroll(model) == steps % K
    torch.testing.assert_close(model(x), full, rtol=0, atol=1e-12)
    for k in range(1, K):  # the sub-networks are other channels now
        with width(model, k):
            assert not torch.allclose(model(x), narrow[k])


def _rotate_full_width_bn(model, steps):
    """Move the full-width BN's parameters and statistics with the channels (what the scroll
    deliberately does not do): position i takes the values of stored channel i + shift."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SwitchableBatchNorm):
                bn = m.bns[-1]
                c = bn.num_features // m.splits * steps
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    t.copy_(t.roll(-c, 0))


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_scroll_with_bn_is_a_permutation_up_to_the_unscrolled_bn(name):
    """BN models (eval mode): scrolling changes the full-width function only through BN,
    which stays at its positions (paper Sec. 4.1); rotating BN with the channels restores it."""
    model, shape = _slim(name, dtype=torch.float64)
    _randomise_bn(model)
    model.eval()
    x = torch.randn(4, *shape, dtype=torch.float64)
    full = model(x)
    scroll(model, 1)
    assert not torch.allclose(model(x), full, atol=1e-6)  # BN is not scrolled
    _rotate_full_width_bn(model, 1)
    torch.testing.assert_close(model(x), full, rtol=0, atol=1e-10)


def test_bn_free_alexnet_scroll_is_a_pure_permutation():
    """Also through AlexNet's flatten: fc1's input groups are c3's channel groups."""
    shape = MODELS["alexnet"][1]
    bnfree = make_slimmable(_alexnet(torch.float64, batch_norm=None), K)
    x = torch.randn(3, *shape, dtype=torch.float64)
    full = bnfree(x)
    scroll(bnfree, 2)
    torch.testing.assert_close(bnfree(x), full, rtol=0, atol=1e-10)


def test_scroll_is_saved_with_the_model_and_survives_deepcopy():
    model, shape = _slim("resnet18")
    _randomise_bn(model)
    model.eval()
    scroll(model, 3)
    x = torch.randn(2, *shape)
    y = model(x)
    copied = copy.deepcopy(model)
    assert get_scroll(copied) == 3
    torch.testing.assert_close(copied(x), y, rtol=0, atol=0)
    set_scroll(copied, 0)  # the copy's hook and layers are its own
    assert get_scroll(model) == 3
    fresh, _ = _slim("resnet18")
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert get_scroll(fresh) == 3
    torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)


def test_width_context_restores_on_error():
    model, _ = _slim("mlp")
    with pytest.raises(RuntimeError), width(model, 1):
        raise RuntimeError
    assert all(m.width == K for m in slimmable_modules(model))
    with pytest.raises(ValueError), width(model, K + 1):
        pass
