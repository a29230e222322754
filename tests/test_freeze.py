"""The one freezing mechanism: held entries do not move by a bit under any optimiser."""

import pytest
import torch
from torch import nn

from retain.core.freeze import Freezer

OPTIMISERS = [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.5),
    lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.5),
]


def _steps(layer, freezer, opt, n=20, check=None):
    for _ in range(n):
        loss = layer(torch.randn(8, layer.in_features)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        freezer.mask_grads()
        if check is not None:
            check()
        opt.step()
        freezer.restore()


@pytest.mark.parametrize("make_opt", OPTIMISERS)
def test_frozen_elements_do_not_move_by_a_bit(make_opt):
    torch.manual_seed(0)
    layer = nn.Linear(10, 6)
    frozen = torch.rand(6, 10) < 0.5
    before = layer.weight.detach().clone()
    freezer = Freezer()
    freezer.freeze(layer.weight, frozen)
    freezer.freeze(layer.bias, torch.zeros(6, dtype=torch.bool))  # nothing: ignored
    assert len(freezer) == 1

    def no_grad_under_the_mask():
        assert torch.equal(layer.weight.grad[frozen], torch.zeros(int(frozen.sum())))

    _steps(layer, freezer, make_opt(layer.parameters()), check=no_grad_under_the_mask)
    assert torch.equal(layer.weight.detach()[frozen], before[frozen])
    assert not torch.equal(layer.weight.detach()[~frozen], before[~frozen])
    # without restore, weight decay / momentum would have moved them: the classic leak
    opt2 = make_opt(layer.parameters())
    loss = layer(torch.randn(8, 10)).pow(2).sum()
    opt2.zero_grad()
    loss.backward()
    freezer.mask_grads()
    opt2.step()
    assert not torch.equal(layer.weight.detach()[frozen], before[frozen])


@pytest.mark.parametrize("make_opt", OPTIMISERS)
def test_rows_held_and_rows_and_columns_zeroed_exactly(make_opt):
    torch.manual_seed(0)
    layer = nn.Linear(10, 6)
    before = layer.weight.detach().clone()
    held, zero_rows, zero_cols = torch.tensor([0, 3]), torch.tensor([5]), torch.tensor([2, 7])
    freezer = Freezer()
    freezer.freeze_slices(layer.weight, held)  # owned rows: their current values
    freezer.zero_slices(layer.weight, zero_rows)  # a pruned row
    freezer.zero_slices(layer.weight, zero_cols, dim=1)  # columns reading pruned inputs
    freezer.zero_slices(layer.bias, torch.tensor([], dtype=torch.long))  # nothing: ignored
    freezer.freeze_slices(layer.bias, held, values=torch.tensor([1.0, -1.0]))
    assert len(freezer) == 4

    def no_grad_in_held_slices():
        g = layer.weight.grad
        assert not g[held].any() and not g[zero_rows].any() and not g[:, zero_cols].any()
        assert not layer.bias.grad[held].any()

    _steps(layer, freezer, make_opt(layer.parameters()), check=no_grad_in_held_slices)
    w = layer.weight.detach()
    free_cols = torch.tensor([c for c in range(10) if c not in zero_cols.tolist()])
    # held rows keep their values, except where a later hold (a zeroed column) overlaps
    assert torch.equal(w[held][:, free_cols], before[held][:, free_cols])
    assert not w[zero_rows].any() and not w[:, zero_cols].any()
    assert torch.equal(layer.bias.detach()[held], torch.tensor([1.0, -1.0]))
    others = torch.tensor([1, 2, 4])
    assert not torch.equal(w[others][:, free_cols], before[others][:, free_cols])


def test_clear_and_shape_errors():
    layer = nn.Linear(4, 3)
    freezer = Freezer()
    with pytest.raises(ValueError, match="where has shape"):
        freezer.freeze(layer.weight, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="values have shape"):
        freezer.freeze_slices(layer.weight, torch.tensor([0]), values=torch.zeros(4))
    freezer.freeze(layer.weight, torch.ones(3, 4, dtype=torch.bool))
    assert len(freezer) == 1
    freezer.clear()
    assert len(freezer) == 0
