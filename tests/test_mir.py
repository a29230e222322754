"""MIR: the retrieval against a brute-force virtual step, no side effects, ER when C == k."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retain.data.benchmark import Task
from retain.engine import fit
from retain.methods import BenchmarkInfo, make_method
from retain.methods.base import Batch
from retain.methods.mir import MIR, top_interfered
from retain.models import ContinualModel
from tests.own_loop import train_task
from tests.synthetic import TinyBackbone, blobs

CLASSES = [2, 2]
LR = 0.5


class NormBackbone(nn.Module):
    """A linear layer, batch norm and dropout: state and randomness a scoring pass could touch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2))
        self.out_features = 8

    def forward(self, x):
        return self.net(x)


def _task(t: int) -> Task:
    x, y = torch.zeros(1, 4), torch.zeros(1, dtype=torch.long)
    return Task(t, x, y, x, y, [0, 1], class_offset=2 * t)


def _setup(backbone: nn.Module, **args):
    torch.manual_seed(0)
    model = ContinualModel(backbone, CLASSES)
    method = make_method("mir", memory_size=12, lr=LR, **args)
    method.setup(model, BenchmarkInfo(2, CLASSES, (4,)))
    method.before_task(_task(1))
    g = torch.Generator().manual_seed(3)
    method.buffer.add(
        torch.randn(12, 4, generator=g) * 2,
        torch.randint(0, 2, (12,), generator=g),
        torch.randint(0, 2, (12,), generator=g),
    )
    batch = Batch(torch.randn(6, 4, generator=g), torch.randint(0, 2, (6,), generator=g),
                  torch.ones(6, dtype=torch.long), 1)  # fmt: skip
    return method, model, batch


def _brute_force_scores(model: ContinualModel, batch: Batch, x, y, t) -> torch.Tensor:
    """Per-sample loss increase after a real SGD step (lr LR) on a copy of the model."""

    def losses(m):
        return F.cross_entropy(m(x, upto=2), y + 2 * t, reduction="none")

    with torch.no_grad():
        before = losses(model)
    stepped = copy.deepcopy(model)
    opt = torch.optim.SGD(stepped.parameters(), lr=LR)
    F.cross_entropy(stepped(batch.x, upto=2), batch.y + 2).backward()  # the seen heads
    opt.step()
    with torch.no_grad():
        return losses(stepped) - before


def test_retrieval_picks_the_candidates_whose_loss_rises_most():
    method, model, batch = _setup(TinyBackbone(4, 8), candidates=12, minibatch_size=4)
    model.eval()  # no dropout: the brute force and the method see the same network
    pool = method.buffer.get_all()
    want = _brute_force_scores(model, batch, pool["x"], pool["y"], pool["task_ids"])
    got = method.interference(pool, method.virtual_parameters(batch, _task(1)))
    assert torch.allclose(got, want, atol=1e-5)
    assert want.abs().max() > 1e-3  # the step moves the losses
    picked = method.retrieve(batch, _task(1))
    best = set(torch.topk(want, 4).indices.tolist())  # slots (get_all is in slot order)
    assert set(picked["index"].tolist()) == best


def test_top_interfered_keeps_the_drawn_order():
    scores = torch.tensor([0.1, 0.9, -0.3, 0.9, 0.5])
    assert top_interfered(scores, 3).tolist() == [1, 3, 4]
    assert top_interfered(scores, 9).tolist() == [0, 1, 2, 3, 4]


def test_virtual_step_leaves_weights_grads_optimiser_statistics_and_rng():
    method, model, batch = _setup(NormBackbone(), candidates=8)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(batch.x, upto=2), batch.y + 2).backward()
    opt.step()  # a momentum buffer and .grad to keep
    weights = copy.deepcopy(model.state_dict())  # parameters and batch-norm statistics
    grads = [p.grad.clone() for p in model.parameters()]
    opt_state = copy.deepcopy(opt.state_dict())
    rng = torch.get_rng_state()
    method.retrieve(batch, _task(1))
    assert all(torch.equal(a, b) for a, b in zip(weights.values(), model.state_dict().values()))
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
    after = opt.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    for k, v in opt_state["state"].items():
        assert torch.equal(v["momentum_buffer"], after["state"][k]["momentum_buffer"])
    assert torch.equal(rng, torch.get_rng_state())


def _fit(name: str, **args):
    bench = blobs(n_tasks=3, per_class=40)
    torch.manual_seed(3)
    model = ContinualModel(TinyBackbone(8, 16, dropout=0.1), bench.classes_per_task)
    method = make_method(name, memory_size=24, **args)
    result = fit(model, bench, method, epochs=2, batch_size=16, lr=0.05, momentum=0.9, seed=5)
    return model, method, result


def test_equals_er_when_candidates_equal_the_replayed_batch():
    er_model, _, er_result = _fit("er")
    mir_model, _, mir_result = _fit("mir", candidates=16)  # k: the batch size, 16
    for a, b in zip(er_model.state_dict().values(), mir_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert er_result.task_agnostic.rows == mir_result.task_agnostic.rows
    _, _, other = _fit("mir", candidates=40)
    assert other.task_agnostic.rows != er_result.task_agnostic.rows  # selecting changes it


def test_scoring_changes_nothing_but_the_choice_over_a_whole_run(monkeypatch):
    """With every score equal, the top k of C > k candidates are the first k drawn: ER's draw.
    The virtual step and both scoring passes run at every step (dropout in the model), so any
    trace they left (weights, random numbers, the buffer's generator) would part the runs."""
    calls = []
    score = MIR.interference

    def flat(self, memory, virtual):
        calls.append(1)
        return torch.zeros_like(score(self, memory, virtual))

    monkeypatch.setattr(MIR, "interference", flat)
    er_model, _, er_result = _fit("er")
    mir_model, _, mir_result = _fit("mir", candidates=40)
    assert calls  # the candidates were scored
    for a, b in zip(er_model.state_dict().values(), mir_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert er_result.task_agnostic.rows == mir_result.task_agnostic.rows


def test_fit_gives_the_run_lr_after_its_milestones():
    bench = blobs(n_tasks=2, per_class=20)
    torch.manual_seed(0)
    model = ContinualModel(TinyBackbone(8, 16), bench.classes_per_task)
    method = make_method("mir", memory_size=10)
    fit(model, bench, method, epochs=3, batch_size=8, lr=0.08, lr_milestones=[1], lr_gamma=0.5)
    assert method.virtual_lr() == pytest.approx(0.04)
    method.before_epoch(bench[1], 0)
    assert method.virtual_lr() == pytest.approx(0.08)


def test_a_loop_of_ones_own_needs_the_lr():
    bench = blobs(n_tasks=2, per_class=20)
    model = ContinualModel(TinyBackbone(8, 16), bench.classes_per_task)
    method = make_method("mir", memory_size=10)
    method.setup(model, bench)
    with pytest.raises(RuntimeError, match="lr"):
        train_task(method, bench[0])
    method = make_method("mir", memory_size=10, lr=0.1)
    method.setup(model, bench)
    train_task(method, bench[0])


@pytest.mark.parametrize("args", [{"candidates": 0}, {"lr": 0.0}, {"lr": -1}])
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError):
        make_method("mir", **args)
