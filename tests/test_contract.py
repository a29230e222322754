"""The method contract, checked for every registered method (and the example method of
docs/adding-a-method.md): one parametrised test per property.

* state round trip: after 2 tasks, ``state_dict()`` loaded into a freshly set-up method gives
  the same predictions, task-aware and task-agnostic, on every task, bit for bit;
* kill and resume: a run killed after the first mid-task checkpoint of task 2 (after the
  first task's checkpoint for the methods in ``BOUNDARY_ONLY``) and resumed writes the same
  ``metrics.json``, byte for byte, and the same events, as the uninterrupted run;
* same seed twice: identical ``metrics.json``;
* one's own loop: the hooks driven by the loop of :mod:`retain.methods.base`'s docstring, with
  ``torch.optim.SGD`` on the same batches, give the accuracy matrices of ``fit``; a method
  with its own procedure (``train_task``) is driven by ``method.train_task(task, trainer)``.

To run it on a method of your own: register it (``@register``) and
``pytest tests/test_contract.py -k <name>``; methods with unusual needs get a line in
``SETTINGS``.
"""

from __future__ import annotations

import importlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from retain.engine import fit, runio
from retain.engine.runio import EventLog
from retain.engine.trainer import TrainConfig, Trainer, seed_everything
from retain.methods import REGISTRY, BenchmarkInfo, Method, make_method
from retain.models import MLP, ContinualModel, ReducedResNet18
from tests.own_loop import train_task
from tests.synthetic import blobs

# docs/adding-a-method.md's method, registered for the tests of this file only (imported with
# the registry set aside: a method of that name in the package is tested in its place)
_registered = dict(REGISTRY)
REGISTRY.clear()
try:
    _example = importlib.import_module("tests.example_method")
finally:
    REGISTRY.clear()
    REGISTRY.update(_registered)
EXAMPLE = {
    cls.name: cls
    for cls in vars(_example).values()
    if isinstance(cls, type) and issubclass(cls, Method) and cls.__module__ == _example.__name__
    if cls.name not in REGISTRY
}


@dataclass
class Setting:
    """How one method is run here: its arguments and the smallest model that exercises it."""

    args: dict[str, Any] = field(default_factory=dict)
    images: bool = False  # a ReducedResNet18 on 1x8x8 images instead of an MLP on 8 features
    lr: float = 0.05


SMALL_MEMORY = {"memory_size": 24}  # smaller than a task: the reservoir replaces samples
SETTINGS: dict[str, Setting] = {
    **{n: Setting(SMALL_MEMORY) for n in ("agem", "bic", "der", "derpp", "er", "icarl", "lucir")},
    # warm-up counted in epochs (before_epoch) for one, in steps for the other
    # lr 0.1: it admits only samples it classifies correctly, so it must learn to fill its memory
    "dynamos": Setting({**SMALL_MEMORY, "warmup": 1, "warmup_unit": "epochs"}, True, lr=0.1),
    "dynamos-base": Setting({**SMALL_MEMORY, "warmup": 3}),
    "eidetic": Setting({"patience": 1, "max_recovery_epochs": 1, "step": 0.3}),
    "scrollnet": Setting({"base": "finetune", "splits": 2}),
    "spg": Setting({"importance_epoch": 1}),  # importance taken in before_epoch
    "er-ace": Setting(SMALL_MEMORY),
    "gem": Setting(SMALL_MEMORY),  # fewer memories per task than a task's samples
    "my-er-ace": Setting(SMALL_MEMORY),  # docs/adding-a-method.md's
    # candidates above the stream batch (16): it selects; lr: its own loop has no trainer to
    # read the run's lr from (fit's path, lr=None, is tests/test_mir.py's)
    "mir": Setting({**SMALL_MEMORY, "candidates": 20, "lr": 0.05}),
}
#: methods that checkpoint only at task boundaries, with the reason: killed after the first
#: task's checkpoint instead of inside task 2
BOUNDARY_ONLY = {"eidetic": "its prune-and-recover loop writes no checkpoint inside a task"}
#: methods that the own-loop check cannot drive, with the reason (keep this short)
OWN_LOOP_EXEMPT: dict[str, str] = {}

METHODS = sorted([*REGISTRY, *EXAMPLE])
N_TASKS, EPOCHS, BATCH, MOMENTUM, SEED = 3, 2, 16, 0.9, 5


def _fit_args(name: str) -> dict[str, Any]:
    """``fit``'s keyword arguments of every run of ``name``."""
    lr = SETTINGS.get(name, Setting()).lr
    return dict(epochs=EPOCHS, batch_size=BATCH, lr=lr, momentum=MOMENTUM, seed=SEED)


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    for name, cls in EXAMPLE.items():
        monkeypatch.setitem(REGISTRY, name, cls)


def _bench(name: str):
    if SETTINGS.get(name, Setting()).images:
        from tests.test_dynamos import image_bench

        return image_bench(n_tasks=N_TASKS, per_class=24)
    return blobs(n_tasks=N_TASKS, per_class=40)


def _model(name: str, bench) -> ContinualModel:
    torch.manual_seed(3)
    if SETTINGS.get(name, Setting()).images:
        return ContinualModel(ReducedResNet18(bench.input_shape, nf=4), bench.classes_per_task)
    backbone = MLP(bench.input_shape, hidden=(16, 16), dropout=0.1)
    return ContinualModel(backbone, bench.classes_per_task)


def _method(name: str) -> Method:
    return make_method(name, **SETTINGS.get(name, Setting()).args)


def _info(bench) -> BenchmarkInfo:
    return BenchmarkInfo(bench.n_tasks, bench.classes_per_task, tuple(bench.input_shape))


def _events(run_dir: Path) -> list[dict]:
    """events.jsonl without wall-clock times."""
    lines = (run_dir / runio.EVENTS).read_text().splitlines()
    return [{k: v for k, v in json.loads(s).items() if k != "seconds"} for s in lines]


def _predictions(method: Method, bench, trained: int) -> list[torch.Tensor]:
    """Every prediction a run makes after ``trained`` tasks, on every task's test inputs."""
    assert method.model is not None
    method.model.eval()
    out = []
    for task in bench:
        upto = max(trained, task.id + 1)
        out.append(method.predict(task.x_test, task_id=task.id))
        out += [p for p in method.predict_both(task.x_test, task.id, upto) if p is not None]
        if method.task_agnostic:
            out.append(method.predict(task.x_test, upto=upto))
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equal (NaN where the other has NaN)."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and bool(((a == b) | (a.isnan() & b.isnan())).all())
    )


def _equal(a: Any, b: Any) -> bool:
    """Nested dicts, lists and tensors equal bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and _same(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b


def _roundtrip(obj: Any) -> Any:
    """Through ``torch.save``/``torch.load``, as a checkpoint goes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_gives_identical_predictions(name):
    bench = _bench(name)
    saved = {}

    def snapshot(i, _result):
        if i == 1:  # after 2 tasks
            saved["model"] = _roundtrip(model.state_dict())
            saved["method"] = _roundtrip(method.state_dict())
            saved["predictions"] = _predictions(method, bench, trained=2)

    model, method = _model(name, bench), _method(name)
    fit(model, bench, method, on_task_end=snapshot, **_fit_args(name))
    fresh_model, fresh = _model(name, bench), _method(name)
    fresh.setup(fresh_model, _info(bench))
    fresh_model.load_state_dict(saved["model"])
    fresh.load_state_dict(saved["method"])
    got = _predictions(fresh, bench, trained=2)
    assert len(got) == len(saved["predictions"])
    for i, (a, b) in enumerate(zip(saved["predictions"], got, strict=True)):
        assert _same(a, b), f"prediction {i} differs after load_state_dict"


def _kill_after(monkeypatch, should_die) -> tuple[list[tuple[int, bool]], type[Exception]]:
    """Make ``runio.save_torch`` raise after the first checkpoint ``should_die(state)`` picks
    (as a kill would). Returns the (task, task_done) of every checkpoint written, and the
    exception it raises."""
    save, written = runio.save_torch, []

    class Killed(Exception):
        pass

    def save_then_maybe_die(path, state):
        save(path, state)
        written.append((state["task"], state["task_done"]))
        if should_die(state):
            monkeypatch.setattr(runio, "save_torch", save)
            raise Killed

    monkeypatch.setattr(runio, "save_torch", save_then_maybe_die)
    return written, Killed


def _count_epochs(monkeypatch) -> list[int]:
    """A counter of the epochs ``Trainer.run_epoch`` trains (every phase of every method)."""
    count = [0]
    run_epoch = Trainer.run_epoch

    def counted(self, *args, **kwargs):
        count[0] += 1
        return run_epoch(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", counted)
    return count


@pytest.mark.parametrize("name", METHODS)
def test_kill_and_resume_gives_identical_metrics(name, tmp_path, monkeypatch):
    bench = _bench(name)
    full, killed = tmp_path / "full", tmp_path / "killed"
    kw = dict(_fit_args(name), checkpoint_every=1)
    epochs = _count_epochs(monkeypatch)
    written, _ = _kill_after(monkeypatch, lambda state: False)
    fit(_model(name, bench), bench, _method(name), run_dir=full, **kw)
    n_full, epochs[0] = epochs[0], 0
    mid_task = (1, False) in written
    assert mid_task == (name not in BOUNDARY_ONLY), (
        f"{name} {'now writes' if mid_task else 'writes no'} checkpoints inside a task: "
        "update BOUNDARY_ONLY"
    )
    if mid_task:  # killed after the first checkpoint inside task 2 (index 1)
        _, killed_exc = _kill_after(monkeypatch, lambda s: s["task"] == 1 and not s["task_done"])
    else:  # killed after the first task's checkpoint
        _, killed_exc = _kill_after(monkeypatch, lambda s: s["task"] == 0 and s["task_done"])
    with pytest.raises(killed_exc):
        fit(_model(name, bench), bench, _method(name), run_dir=killed, **kw)
    fit(_model(name, bench), bench, _method(name), run_dir=killed, resume=True, **kw)
    assert (full / runio.METRICS).read_bytes() == (killed / runio.METRICS).read_bytes()
    assert _events(full) == _events(killed)
    assert epochs[0] == n_full, "the killed and the resumed run together trained other epochs"


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_twice_gives_identical_metrics(name, tmp_path):
    bench = _bench(name)
    for run in ("a", "b"):
        fit(_model(name, bench), bench, _method(name), run_dir=tmp_path / run, **_fit_args(name))
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / runio.METRICS).read_bytes() == (b / runio.METRICS).read_bytes()
    assert _events(a) == _events(b)


def _accuracies(method: Method, bench, trained: int) -> tuple[list[float], list[float]]:
    """(task-aware, task-agnostic) test accuracy of every task, as ``fit`` measures them."""
    assert method.model is not None
    method.model.eval()
    aware, agnostic = [], []
    for task in bench:
        upto = max(trained, task.id + 1)
        offset = 0 if method.model.shared_head else task.class_offset
        a, g = method.predict_both(task.x_test, task.id, upto)
        aware.append(float((a.argmax(1) == task.y_test).sum()) / len(task.y_test))
        if g is None or not method.task_agnostic:
            agnostic.append(math.nan)
        else:
            agnostic.append(float((g.argmax(1) == task.y_test + offset).sum()) / len(task.y_test))
    return aware, agnostic


@pytest.mark.parametrize("name", METHODS)
def test_own_loop_with_the_hooks_gives_what_fit_gives(name):
    if name in OWN_LOOP_EXEMPT:
        pytest.skip(OWN_LOOP_EXEMPT[name])
    bench = _bench(name)
    fitted, fitted_method = _model(name, bench), _method(name)
    kw = _fit_args(name)
    r = fit(fitted, bench, fitted_method, **kw)

    model, method = _model(name, bench), _method(name)
    method.setup(model, _info(bench))
    seed_everything(SEED)
    generator = torch.Generator().manual_seed(SEED)
    own_procedure = type(method).train_task is not Method.train_task
    trainer = Trainer(
        model,
        method,
        bench,
        TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=kw["lr"], momentum=MOMENTUM),
        generator,
        EventLog(None),
        progress=False,
    )
    rows_aware, rows_agnostic = [], []
    for task in bench:
        method.before_task(task)
        if own_procedure:
            method.train_task(task, trainer)
        else:  # the loop of retain.methods.base's docstring
            train_task(
                method,
                task,
                generator,
                epochs=EPOCHS,
                lr=kw["lr"],
                batch_size=BATCH,
                momentum=MOMENTUM,
                start=False,
                finish=False,
            )
        method.after_task(task)
        aware, agnostic = _accuracies(method, bench, trained=task.id + 1)
        rows_aware.append(aware)
        rows_agnostic.append(agnostic)
    assert _equal(fitted.state_dict(), model.state_dict()), "the weights differ from fit's"
    assert _equal(fitted_method.state_dict(), method.state_dict()), "the state differs from fit's"
    assert rows_aware == r.task_aware.rows
    nan = -1.0  # NaN != NaN
    assert [[nan if math.isnan(v) else v for v in row] for row in rows_agnostic] == [
        [nan if math.isnan(v) else v for v in row] for row in r.task_agnostic.rows
    ]


def test_the_docs_show_the_example_method_verbatim():
    """docs/adding-a-method.md's code block is tests/example_method.py, character for character."""
    root = Path(__file__).resolve().parent.parent
    page = (root / "docs" / "adding-a-method.md").read_text()
    marker = (
        "<!-- the file tests/example_method.py, verbatim (tests/test_contract.py checks it) -->"
    )
    assert page.count(marker) == 1
    block = page.split(marker, 1)[1].lstrip("\n")
    assert block.startswith("```python\n")
    code = block.removeprefix("```python\n").split("\n```\n", 1)[0] + "\n"
    assert code == (root / "tests" / "example_method.py").read_text()
