"""ER-ACE: the asymmetric cross-entropy on hand-made batches (masks, gradients, replay)."""

from __future__ import annotations

import pytest
import torch

from retain.data.benchmark import Task
from retain.methods import BenchmarkInfo, make_method
from retain.methods.base import Batch
from retain.methods.er_ace import masked_cross_entropy
from retain.models import ContinualModel
from tests.synthetic import TinyBackbone

CLASSES = [3, 3]  # two tasks of three classes: global labels 0..2 and 3..5


def _task(t: int) -> Task:
    x = torch.zeros(1, 4)
    y = torch.zeros(1, dtype=torch.long)
    return Task(t, x, y, x, y, list(range(3)), class_offset=3 * t)


def _method(**args):
    torch.manual_seed(0)
    model = ContinualModel(TinyBackbone(4, 8), CLASSES)
    method = make_method("er-ace", **args)
    method.setup(model, BenchmarkInfo(2, CLASSES, (4,)))
    method.before_task(_task(1))
    return method, model


def _incoming(local: list[int]) -> Batch:
    g = torch.Generator().manual_seed(1)
    y = torch.tensor(local)
    return Batch(torch.randn(len(y), 4, generator=g), y, torch.ones(len(y), dtype=torch.long), 1)


def _ce(logits: torch.Tensor, target: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """The cross-entropy over ``classes`` written out: mean of -z_y + log sum_c exp z_c."""
    z = logits[:, classes]
    return (-logits[torch.arange(len(target)), target] + z.exp().sum(1).log()).mean()


@pytest.mark.parametrize("mask, kept", [("batch", [3, 5]), ("task", [3, 4, 5])])
def test_loss_is_the_asymmetric_cross_entropy(mask, kept):
    method, model = _method(memory_size=10, minibatch_size=10, incoming_mask=mask)
    g = torch.Generator().manual_seed(2)
    xm = torch.randn(5, 4, generator=g)
    ym, tm = torch.tensor([0, 2, 1, 0, 1]), torch.tensor([0, 0, 1, 1, 0])
    method.buffer.add(xm, ym, tm)
    batch = _incoming([0, 2, 0])  # task 1, classes 3 and 5 present, 4 absent
    got = method.loss(batch, _task(1))
    with torch.no_grad():
        incoming = _ce(model(batch.x, upto=2), batch.y + 3, kept)
        replay = _ce(model(xm, upto=2), ym + 3 * tm, list(range(6)))
    assert torch.allclose(got, incoming + replay, atol=1e-6)
    assert not torch.allclose(got, _ce(model(batch.x, upto=2), batch.y + 3, list(range(6))))


def test_incoming_batch_gives_no_gradient_outside_the_mask():
    method, model = _method()  # empty memory: the incoming term alone
    method.loss(_incoming([0, 2, 0]), _task(1)).backward()
    assert model.heads[0].weight.grad is None or not model.heads[0].weight.grad.any()
    rows = model.heads[1].weight.grad.abs().sum(1)
    assert rows[1] == 0  # class 4, absent from the batch
    assert rows[0] > 0 and rows[2] > 0


def test_masked_cross_entropy_zeroes_the_masked_logits_gradient():
    logits = torch.randn(4, 6, requires_grad=True)
    keep = torch.tensor([False, True, False, True, True, False])
    target = torch.tensor([1, 3, 4, 1])
    masked_cross_entropy(logits, target, keep).backward()
    assert not logits.grad[:, ~keep].any()
    assert logits.grad[:, keep].abs().sum(0).gt(0).all()


def test_replayed_batch_trains_every_seen_class():
    method, model = _method(memory_size=4)
    method.buffer.add(torch.randn(4, 4), torch.tensor([0, 1, 2, 0]), torch.zeros(4).long())
    method.loss(_incoming([0, 2, 0]), _task(1)).backward()
    assert model.heads[0].weight.grad.abs().sum(1).gt(0).all()  # task 0's classes, replayed
    assert model.heads[1].weight.grad[1].abs().sum() > 0  # class 4: pushed down by replay


def test_a_bad_mask_is_refused():
    with pytest.raises(ValueError, match="incoming_mask"):
        make_method("er-ace", incoming_mask="seen")
