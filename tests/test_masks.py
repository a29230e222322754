import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retain.core.masks import (
    LayerUsage,
    MaskBank,
    PackedMask,
    ScoreMask,
    WeightMask,
    attach,
    capacity_report,
    check_no_stateful_norm,
    density_count,
    kth_largest,
    mask_of,
    masked_layers,
    pack_bits,
    popcount,
    raw_weight,
    supermask,
    topk_mask,
    unpack_bits,
)
from retain.models import MLP, AlexNet


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 5, 7), (64, 33)])
def test_pack_bits_matches_numpy_and_round_trips(shape):
    g = torch.Generator().manual_seed(0)
    m = torch.rand(shape, generator=g) < 0.3
    packed = pack_bits(m)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(m.numel() / 8)
    assert np.array_equal(packed.numpy(), np.packbits(m.numpy().reshape(-1)))
    assert torch.equal(unpack_bits(packed, m.numel()), m.reshape(-1))
    assert popcount(packed) == int(m.sum())


def test_packed_mask_set_operations_keep_padding_clean():
    g = torch.Generator().manual_seed(1)
    a_t = torch.rand(5, 3, generator=g) < 0.5  # 15 positions: one padding bit
    b_t = torch.rand(5, 3, generator=g) < 0.5
    a, b = PackedMask.from_tensor(a_t), PackedMask.from_tensor(b_t)
    assert torch.equal((a | b).to_tensor(), a_t | b_t)
    assert torch.equal((a & b).to_tensor(), a_t & b_t)
    assert torch.equal((~a).to_tensor(), ~a_t)
    assert (~a).count() == 15 - int(a_t.sum())  # padding bit not counted
    assert (~~a) == a and a.nbytes == 2 and a.numel == 15
    assert PackedMask.from_state(a.state()) == a
    with pytest.raises(ValueError, match="shapes"):
        _ = a | PackedMask.from_tensor(torch.zeros(15, dtype=torch.bool))


def test_mask_bank_union_usage_and_state():
    bank = MaskBank()
    g = torch.Generator().manual_seed(2)
    masks = [torch.rand(6, 10, generator=g) < 0.2 for _ in range(3)]
    for t, m in enumerate(masks):
        bank.add(t, {"fc": m})
    bank.add(2, {"head.2": torch.ones(3, 6, dtype=torch.bool)})
    assert bank.n_tasks == 3 and bank.tasks("head.2") == [2] and bank.has(2, "head.2")
    assert torch.equal(bank.get(1, "fc"), masks[1])
    assert torch.equal(bank.union("fc", [0, 2]), masks[0] | masks[2])
    assert torch.equal(bank.union("fc"), masks[0] | masks[1] | masks[2])
    u = bank.usage("fc")
    cum = torch.zeros(6, 10, dtype=torch.bool)
    history = []
    for m in masks:
        cum |= m
        history.append(int(cum.sum()))
    assert u.used_after_task == history and u.used == history[-1] and u.weights == 60
    assert u.mask_bits == 180 and u.packed_bytes == 3 * 8
    assert u.encoded_bytes == sum(len(bank.code(t, "fc")) for t in range(3))
    head = bank.usage("head.2")
    assert head.used_after_task == [0, 0, 18]
    other = MaskBank()
    other.load_state_dict(bank.state_dict())
    assert other.report() == bank.report()
    with pytest.raises(ValueError, match="shape"):
        bank.add(3, {"fc": torch.zeros(5, 10, dtype=torch.bool)})


def test_capacity_report_totals_and_cap():
    layers = {
        "a": LayerUsage(100, 40, [20, 40], mask_bits=200, packed_bytes=26, encoded_bytes=10),
        "b": LayerUsage(50, 50, [25, 50], mask_bits=100, packed_bytes=14, encoded_bytes=20),
    }
    rep = capacity_report(layers)
    assert rep["layers"]["a"]["free"] == 60 and rep["layers"]["a"]["used_frac"] == 0.4
    t = rep["total"]
    assert t["weights"] == 150 and t["used"] == 90 and t["free"] == 60
    assert t["used_frac_after_task"] == [round(45 / 150, 6), 0.6]
    assert t["mask_bits"] == 300 and t["mask_bytes_packed"] == 40
    assert t["mask_bytes_encoded"] == 30
    assert t["cap"] == pytest.approx((90 + 30 * 8 / 32) / 150, abs=1e-6)
    assert t["cap_raw"] == pytest.approx((90 + 300 / 32) / 150, abs=1e-6)


@pytest.mark.parametrize("n", [10, 1000, 70_000, 300_000])
def test_kth_largest_and_topk_mask_are_exact(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g).abs()
    x[: n // 10] = -0.0  # negative zeros and many ties
    for k in sorted({1, 2, n // 3, n // 2, n - 1, n}):
        assert kth_largest(x, k) == x.kthvalue(n - k + 1).values
        assert kth_largest(x.abs(), k, nonneg=True) == x.kthvalue(n - k + 1).values
        m = topk_mask(x, k)
        assert int(m.sum()) == k
        assert torch.equal(topk_mask(x.abs(), k, nonneg=True), m)
        assert x[m].min() >= x[~m].max() if k < n else True
    signed = torch.randn(n, generator=g)  # negative values: the general path
    assert kth_largest(signed, 1) == signed.max()
    assert int(topk_mask(torch.zeros(n), n // 2).sum()) == n // 2  # all tied
    assert int(topk_mask(x, 0).sum()) == 0 and bool(topk_mask(x, n).all())
    with pytest.raises(ValueError):
        kth_largest(x, 0)


def test_density_count():
    assert density_count(1000, 0.03) == 30
    assert density_count(10, 0.01) == 1  # a non-zero density keeps at least one weight
    assert density_count(10, 0.0) == 0 and density_count(10, 1.0) == 10
    with pytest.raises(ValueError):
        density_count(10, 1.5)


def test_supermask_straight_through_gradient():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(50, 20, generator=g).requires_grad_(True)
    m = supermask(s, 0.3)
    assert set(m.unique().tolist()) == {0.0, 1.0} and int(m.sum()) == 300
    upstream = torch.randn(50, 20, generator=g)
    (m * upstream).sum().backward()
    assert torch.equal(s.grad, torch.sign(s.detach()) * upstream)


def test_weight_mask_and_score_mask_parametrizations():
    torch.manual_seed(0)
    layer = nn.Linear(12, 7)
    w0 = layer.weight.detach().clone()
    wm = attach(layer, WeightMask())
    x = torch.randn(4, 12)
    assert torch.equal(layer(x), F.linear(x, w0, layer.bias))
    mask = (torch.rand(7, 12) < 0.5).float()
    wm.mask = mask
    assert torch.equal(layer(x), F.linear(x, w0 * mask, layer.bias))
    assert raw_weight(layer) is layer.parametrizations.weight.original and mask_of(layer) is wm

    conv = nn.Conv2d(3, 5, 3)
    sm = attach(conv, ScoreMask(conv.weight.shape, density=0.25))
    used = conv.weight != 0
    assert int(used.sum()) == density_count(conv.weight.numel(), 0.25)
    assert torch.equal(used, sm.current_mask())
    assert sm.scores.abs().max() <= 1 / math.sqrt(27)  # kaiming uniform bound
    y = conv(torch.randn(2, 3, 8, 8)).sum()
    y.backward()
    assert sm.scores.grad is not None and raw_weight(conv).grad is not None
    with pytest.raises(ValueError):
        ScoreMask((3, 3), density=0.0)


def test_masked_layers_finds_linear_and_conv_in_order():
    assert list(masked_layers(MLP(8, hidden=(4, 3)))) == ["layers.0", "layers.1"]
    net = AlexNet((1, 16, 16), nhid=8)
    assert list(masked_layers(net)) == ["c1", "c2", "c3", "fc1", "fc2"]


def test_check_no_stateful_norm():
    check_no_stateful_norm(AlexNet((1, 16, 16), nhid=8, batch_norm="stats_free"), "x")
    with pytest.raises(ValueError, match="bn1"):
        check_no_stateful_norm(AlexNet((1, 16, 16), nhid=8, batch_norm="affine"), "x")


def test_a_layer_gets_one_mask():
    layer = nn.Linear(3, 2)
    attach(layer, WeightMask())
    with pytest.raises(ValueError, match="already"):
        attach(layer, WeightMask())
