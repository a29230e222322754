"""The Python API with a model and a loop of one's own (README.md, "Python API").

* ``retain.fit`` takes a plain ``nn.Module`` (an ``nn.Sequential`` and a custom class) for
  every registered method: wrapped by ``ContinualModel.wrap`` (the module is the backbone, its
  feature size found by one forward pass, per-task heads added), or refused in one line;
* ``ContinualModel.wrap``'s rule and its refusals, word for word;
* ``method.setup`` takes the Benchmark itself (or a ``retain.BenchmarkInfo``) and refuses a
  plain module or ``bench.info`` in one line;
* ScrollNet on an ``nn.Sequential`` backbone;
* ``method.predict(x)`` without a task id refuses for the task-aware-only methods and answers
  for every other; ``fit``'s evaluation (NaN task-agnostic accuracy) still runs for them;
* a method with a procedure of its own (``own_procedure``) in a loop of one's own: the
  supported way (``method.train_task(task, retain.Trainer.standalone(...))``) gives what
  ``fit`` gives; its hooks driven by a plain loop refuse.
"""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch
from torch import nn

import retain
from retain.engine import SetupError
from retain.methods import REGISTRY, BenchmarkInfo, Method, make_method
from retain.models import MLP, ContinualModel
from retain.models.slimmable import width
from tests.own_loop import train_task
from tests.synthetic import blobs
from tests.test_contract import SETTINGS, Setting, _accuracies, _equal

METHODS = sorted(REGISTRY)
#: methods that refuse a plain MLP-like module, with the one line they say
REFUSES = {"dynamos": "gating needs a ResNet backbone (with .stages of BasicBlocks)"}
TASK_AWARE_ONLY = {"hat", "packnet", "supsup", "wsn"}
OWN_PROCEDURE = {"eidetic", "gdumb", "joint", "packnet"}
FEATURES = 16


def _bench():
    """Three tasks of two classes in 8 dimensions, through the public constructor."""
    b = blobs(n_tasks=3, per_class=12)
    x_train = torch.cat([t.x_train for t in b])
    y_train = torch.cat([t.y_train + t.class_offset for t in b])
    x_test = torch.cat([t.x_test for t in b])
    y_test = torch.cat([t.y_test + t.class_offset for t in b])
    return retain.benchmark_from_tensors(
        x_train, y_train, x_test, y_test, tasks=[[0, 1], [2, 3], [4, 5]], name="tiny"
    )


class MyMLP(nn.Module):
    """A module of one's own: features, no classifier, no ``out_features``."""

    def __init__(self, d_in: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, FEATURES)
        self.fc2 = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x.flatten(1)).relu()).relu()


def _module(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "sequential":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(8, FEATURES),
            nn.ReLU(),
            nn.Linear(FEATURES, FEATURES),
            nn.ReLU(),
        )
    return MyMLP()


def _method(name: str) -> Method:
    return make_method(name, **SETTINGS.get(name, Setting()).args)


@cache
def _fitted(name: str, kind: str):
    """(module given, method, result) of one quick fit of ``name`` on a plain module."""
    bench, module = _bench(), _module(kind)
    method = _method(name)
    result = retain.fit(module, bench, method, epochs=1, batch_size=16, lr=0.05)
    return module, method, result


# ---------------------------------------------------------------------------- fit: own module
@pytest.mark.parametrize("kind", ["sequential", "class"])
@pytest.mark.parametrize("name", [n for n in METHODS if n not in REFUSES])
def test_fit_trains_a_plain_module_with_every_method(name, kind):
    before = {k: v.clone() for k, v in _module(kind).state_dict().items()}
    module, method, result = _fitted(name, kind)
    assert isinstance(method.model, ContinualModel)
    assert method.model.backbone is module  # the user's module, trained in place
    assert module.out_features == FEATURES
    assert len(result.task_aware.rows) == 3
    assert all(0.0 <= v <= 1.0 for row in result.task_aware.rows for v in row)
    after = module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)


@pytest.mark.parametrize("kind", ["sequential", "class"])
@pytest.mark.parametrize("name", sorted(REFUSES))
def test_fit_refuses_a_plain_module_in_one_line_where_the_method_cannot_use_it(name, kind):
    with pytest.raises(SetupError) as e:
        retain.fit(_module(kind), _bench(), _method(name), epochs=1, batch_size=16)
    assert str(e.value) == REFUSES[name]


def test_wrap_takes_the_module_as_backbone_with_per_task_heads():
    bench, module = _bench(), MyMLP()
    model = ContinualModel.wrap(module, bench)
    assert model.backbone is module and module.out_features == FEATURES
    assert [(h.in_features, h.out_features) for h in model.heads] == [(FEATURES, 2)] * 3
    assert ContinualModel.wrap(model, bench) is model  # a ContinualModel as it is
    assert module.training  # the probing forward pass restores the mode
    shared = ContinualModel.wrap(MyMLP(), bench, head="shared")
    assert shared.shared_head and len(shared.heads) == 1


def test_wrap_keeps_a_matching_out_features_and_refuses_another():
    bench = _bench()
    module = MyMLP()
    module.out_features = FEATURES
    assert ContinualModel.wrap(module, bench).backbone is module
    module.out_features = 32
    with pytest.raises(ValueError) as e:
        ContinualModel.wrap(module, bench)
    assert str(e.value) == (
        "MyMLP says out_features=32 but returns 16 features for an input of shape (8,)"
    )


def test_wrap_refuses_a_module_whose_output_is_the_number_of_classes():
    bench = _bench()
    classifier = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, bench.n_classes))
    with pytest.raises(ValueError) as e:
        retain.fit(classifier, bench, make_method("finetune"), epochs=1)
    assert str(e.value) == (
        "Sequential returns 6 outputs, the benchmark's number of classes: it looks like a "
        "whole classifier, and retain adds the task heads itself; pass it without its output "
        "layer (its features), or wrap it yourself: retain.ContinualModel(backbone, "
        "bench.classes_per_task) with backbone.out_features set"
    )
    assert not hasattr(classifier, "out_features")  # nothing changed on a refusal


def test_wrap_refuses_a_module_that_does_not_take_the_inputs():
    with pytest.raises(ValueError) as e:
        ContinualModel.wrap(nn.Linear(5, 4), _bench())
    message = str(e.value)
    assert message.startswith(
        "cannot find the feature size of Linear: its forward on a batch of shape (2, 8) failed ("
    )
    assert "\n" not in message


def test_wrap_refuses_a_module_without_flat_features():
    flat = _bench()
    images = [
        torch.cat([getattr(t, f) for t in flat]).view(-1, 1, 2, 4) for f in ("x_train", "x_test")
    ]
    labels = [
        torch.cat([getattr(t, f) + t.class_offset for t in flat]) for f in ("y_train", "y_test")
    ]
    bench = retain.benchmark_from_tensors(images[0], labels[0], images[1], labels[1], n_tasks=3)
    with pytest.raises(ValueError) as e:
        ContinualModel.wrap(nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU()), bench)
    assert str(e.value) == (
        "Sequential must return features of shape [batch, d] to be wrapped with task heads, "
        "got (2, 4, 2, 4) for a batch of shape (2, 1, 2, 4); flatten its output, or build "
        "retain.ContinualModel(backbone, bench.classes_per_task) yourself"
    )


def test_wrap_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match=r"^the model must be a torch nn.Module, got function$"):
        ContinualModel.wrap(lambda x: x, _bench())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- setup
@pytest.mark.parametrize("name", METHODS)
def test_setup_refuses_a_plain_module_naming_the_wrap(name):
    with pytest.raises(TypeError) as e:
        _method(name).setup(MyMLP(), _bench())
    assert str(e.value) == (
        "method.setup needs a retain.ContinualModel (a backbone plus task heads), got MyMLP; "
        "wrap it first: model = retain.ContinualModel.wrap(model, bench) (retain.fit does this "
        "itself)"
    )


@pytest.mark.parametrize("name", [n for n in METHODS if n not in REFUSES])
def test_setup_takes_the_benchmark_itself(name):
    bench = _bench()
    method = _method(name)
    method.setup(ContinualModel.wrap(MyMLP(), bench), bench)
    assert method.info == BenchmarkInfo(3, [2, 2, 2], (8,))
    assert type(method.info) is BenchmarkInfo


def test_setup_refuses_bench_info_in_one_line():
    bench = _bench()
    with pytest.raises(TypeError) as e:
        make_method("hat").setup(ContinualModel.wrap(MyMLP(), bench), bench.info)
    assert str(e.value) == (
        "method.setup(model, info) needs the Benchmark or a retain.BenchmarkInfo, got dict "
        "(bench.info is free-form facts; pass bench itself)"
    )


def test_benchmark_info_and_trainer_are_exported():
    assert retain.BenchmarkInfo is BenchmarkInfo
    assert "BenchmarkInfo" in retain.__all__ and "Trainer" in retain.__all__
    assert retain.BenchmarkInfo.of(_bench()) == BenchmarkInfo(3, [2, 2, 2], (8,))


def test_hat_in_the_readme_loop_with_the_benchmark_given_to_setup():
    """README's loop (``method.setup(model, bench)``, hooks, ``predict(x, task_id=...)``) with
    HAT, whose setup used to fail on ``bench.info``; it learns and keeps task 0 (masks)."""
    bench = blobs(n_tasks=3, per_class=40)
    torch.manual_seed(0)
    model = ContinualModel.wrap(MyMLP(), bench)
    method = make_method("hat")
    method.setup(model, bench)
    x = bench[0].x_test
    seen = []
    for task in bench:
        train_task(method, task, epochs=3, lr=0.1)
        model.eval()
        seen.append(method.predict(x, task_id=0).argmax(1))
    assert float((seen[0] == bench[0].y_test).float().mean()) > 0.9
    assert torch.equal(seen[0], seen[-1])


# ---------------------------------------------------------------------------- ScrollNet
def test_scrollnet_slims_a_sequential_backbone_once():
    """The Sequential's FullOutput runs once, as its last layer (a forward hook as well ran it
    twice: "expected 8 features at width 1, got 16")."""
    bench = _bench()
    model = ContinualModel.wrap(_module("sequential"), bench)
    method = make_method("scrollnet", splits=2)
    method.setup(model, bench)
    assert list(model.backbone._modules)[-1] == "slim_output"
    assert not model.backbone._forward_hooks
    x = bench[0].x_test
    with width(model, 1):
        h = model.backbone(x)
    assert h.shape == (len(x), FEATURES)
    assert bool((h[:, FEATURES // 2 :] == 0).all()) and bool((h[:, : FEATURES // 2] != 0).any())
    assert model.backbone(x).shape == (len(x), FEATURES)


# ---------------------------------------------------------------------------- predict
@pytest.mark.parametrize("name", [n for n in METHODS if n not in REFUSES])
def test_predict_without_a_task_id_refuses_only_for_task_aware_methods(name):
    _, method, result = _fitted(name, "sequential")
    x = _bench()[0].x_test
    assert method.task_agnostic == (name not in TASK_AWARE_ONLY)
    assert method.predict(x, task_id=0).shape == (len(x), 2)
    if name in TASK_AWARE_ONLY:
        with pytest.raises(ValueError) as e:
            method.predict(x)
        assert str(e.value) == (
            f"method {name!r} predicts only with a task id (it is task-aware only): "
            "call method.predict(x, task_id=t)"
        )
        assert all(math.isnan(v) for row in result.task_agnostic.rows for v in row)
    else:
        assert method.predict(x).shape == (len(x), 6)
        assert not any(math.isnan(v) for row in result.task_agnostic.rows for v in row)


def test_scrollnet_around_a_task_aware_method_refuses_too():
    bench = _bench()
    method = make_method("scrollnet", base="hat", splits=2)
    result = retain.fit(MyMLP(), bench, method, epochs=1, batch_size=16)
    assert math.isnan(result.task_agnostic.rows[-1][0])
    with pytest.raises(ValueError, match=r"^method 'hat' predicts only with a task id"):
        method.predict(bench[0].x_test)


# ---------------------------------------------------------------------------- own procedure
def test_the_methods_with_a_procedure_of_their_own():
    assert {n for n in METHODS if _method(n).own_procedure} == OWN_PROCEDURE
    assert make_method("scrollnet", base="packnet").own_procedure
    assert not make_method("scrollnet", base="ewc").own_procedure


@pytest.mark.parametrize(
    "name, method",
    [(n, lambda n=n: _method(n)) for n in sorted(OWN_PROCEDURE)]
    + [("packnet", lambda: make_method("scrollnet", base="packnet", splits=2))],
    ids=[*sorted(OWN_PROCEDURE), "scrollnet-packnet"],
)
def test_a_plain_loop_over_the_hooks_refuses_a_method_with_its_own_procedure(name, method):
    bench = _bench()
    method = method()
    method.setup(ContinualModel.wrap(MyMLP(), bench), bench)
    with pytest.raises(RuntimeError) as e:
        train_task(method, bench[0], steps=1)
    assert str(e.value) == (
        f"method {name!r} trains a task with a procedure of its own, not with a loop over its "
        "hooks: call method.train_task(task, trainer) with trainer = "
        "retain.Trainer.standalone(model, method, generator, benchmark=bench, ...)"
    )
    assert not method._in_procedure  # the flag is set only inside train_task


@pytest.mark.parametrize("name", sorted(OWN_PROCEDURE))
def test_the_documented_way_gives_what_fit_gives(name):
    """README's loop for a method with ``own_procedure``: the same weights, method state and
    task-aware accuracies as ``fit`` with the same settings and seed."""
    bench = blobs(n_tasks=3, per_class=40)
    settings = dict(epochs=2, batch_size=16, lr=0.05, momentum=0.9)

    def model():
        torch.manual_seed(3)
        return ContinualModel(MLP(bench.input_shape, hidden=(16, 16)), bench.classes_per_task)

    fitted, fitted_method = model(), _method(name)
    r = retain.fit(fitted, bench, fitted_method, seed=5, **settings)

    mine, method = model(), _method(name)
    method.setup(mine, bench)
    retain.seed_everything(5)
    generator = torch.Generator().manual_seed(5)
    trainer = retain.Trainer.standalone(mine, method, generator, benchmark=bench, **settings)
    rows = []
    for task in bench:
        method.before_task(task)
        assert method.own_procedure
        method.train_task(task, trainer)
        method.after_task(task)
        rows.append(_accuracies(method, bench, trained=task.id + 1)[0])
    assert _equal(fitted.state_dict(), mine.state_dict())
    assert _equal(fitted_method.state_dict(), method.state_dict())
    assert rows == r.task_aware.rows
