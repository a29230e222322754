import json

import pytest
import torch

from retain.engine import fit
from retain.methods import Method, make_method
from retain.models import ContinualModel
from tests.synthetic import TinyBackbone, blobs


def _model(bench, seed=0, dropout=0.0, head="task"):
    torch.manual_seed(seed)
    return ContinualModel(TinyBackbone(dropout=dropout), bench.classes_per_task, head=head)


def test_finetune_learns_each_task_and_fills_both_matrices(bench):
    r = fit(_model(bench), bench, make_method("finetune"), epochs=5, lr=0.1, batch_size=16)
    aw, ag = r.task_aware, r.task_agnostic
    assert aw.trained == ag.trained == 3
    for i in range(3):
        assert aw.rows[i][i] > 0.9  # each task learned when it is trained
    assert aw.initial is not None and len(aw.initial) == 3
    # task-agnostic is never better than task-aware (more classes to confuse)
    for i in range(3):
        for j in range(i + 1):
            assert ag.rows[i][j] <= aw.rows[i][j] + 1e-12


def test_finetune_trains_only_backbone_and_current_head(bench):
    model = _model(bench)
    old_head = [p.clone() for p in model.heads[0].parameters()]
    future_head = [p.clone() for p in model.heads[2].parameters()]
    m = make_method("finetune")
    # train only task 1: head 0 and head 2 must not move, even with momentum and weight decay
    from retain.data import Benchmark

    one_task = Benchmark("b", bench.tasks, bench.input_shape)
    m.setup(model, None)
    m.before_task(one_task[1])
    params = m.trainable_parameters(one_task[1])
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)
    for b in m.batches(one_task[1], 16, torch.Generator().manual_seed(0)):
        loss = m.loss(b, one_task[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(old_head, model.heads[0].parameters()))
    assert all(torch.equal(a, b) for a, b in zip(future_head, model.heads[2].parameters()))


def test_task_loss_equals_masked_concatenated_loss(bench):
    """The fast single-task path and the mixed-batch path give the same loss."""
    model = _model(bench)
    m = make_method("finetune")
    m.setup(model, None)
    task = bench[1]
    m.before_task(task)
    b = next(m.batches(task, 32, torch.Generator().manual_seed(0)))
    fast = m.loss(b, task)
    b.task = None
    slow = m.loss(b, task)
    assert torch.allclose(fast, slow, atol=1e-6)


def test_same_seed_same_numbers_and_different_seed_different(bench):
    def run(seed):
        model = _model(bench, seed=seed, dropout=0.3)
        return fit(model, bench, make_method("finetune"), epochs=2, lr=0.1, seed=seed).metrics()

    assert json.dumps(run(1)) == json.dumps(run(1))
    assert json.dumps(run(1)) != json.dumps(run(2))


def test_joint_sees_all_tasks_so_far(bench):
    model = _model(bench)
    m = make_method("joint")
    seen = []

    class Spy(type(m)):
        def loss(self, batch, task):
            seen.append((task.id, set(batch.task_ids.tolist())))
            return super().loss(batch, task)

    spy = Spy()
    fit(model, bench, spy, epochs=1, lr=0.05, batch_size=500)
    assert seen == [(0, {0}), (1, {0, 1}), (2, {0, 1, 2})]


def test_joint_beats_finetune_on_task_agnostic_forgetting():
    bench = blobs(n_tasks=3, per_class=60)
    ft = fit(_model(bench), bench, make_method("finetune"), epochs=8, lr=0.1, batch_size=16)
    jt = fit(_model(bench), bench, make_method("joint"), epochs=8, lr=0.1, batch_size=16)
    assert ft.task_agnostic.bwt() < -0.3
    assert jt.task_agnostic.bwt() > -0.1
    assert jt.task_agnostic.acc() > ft.task_agnostic.acc() + 0.2


def test_one_resets_model_per_task_and_keeps_experts(bench):
    model = _model(bench)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    m = make_method("one")
    starts = []

    class Spy(type(m)):
        def before_task(self, task):
            super().before_task(task)
            starts.append({k: v.clone() for k, v in self.model.state_dict().items()})

    spy = Spy()
    r = fit(model, bench, spy, epochs=3, lr=0.1, batch_size=16)
    for s in starts:
        assert all(torch.equal(s[k], init[k]) for k in init)
    # each expert is untouched by later tasks: the task-aware diagonal is the final row
    assert r.task_aware.rows[-1] == [r.task_aware.rows[j][j] for j in range(3)]


class Crash(Exception):
    pass


class CrashAfter(Method):
    """Fine-tuning that raises after ``n`` optimiser steps (a simulated kill); named as the
    method it stands in for, since a resume refuses a checkpoint of another method."""

    name = "finetune"

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.steps = 0

    def after_step(self, batch, task) -> None:
        self.steps += 1
        if self.steps == self.n:
            raise Crash


def test_a_row_of_metrics_json_always_has_its_checkpoint(tmp_path, monkeypatch):
    """The checkpoint of a task is written before its row in metrics.json, so a run killed
    between the two resumes; killed after the last checkpoint, resuming writes the missing
    metrics.json without training again."""
    from retain.engine import runio

    bench = blobs(n_tasks=3, per_class=24)
    full, run = tmp_path / "full", tmp_path / "run"
    fit(_model(bench, seed=3), bench, make_method("finetune"), run_dir=full, epochs=2, seed=5)
    order = []
    real_save, real_json = runio.save_torch, runio.write_json
    monkeypatch.setattr(
        runio, "save_torch", lambda p, obj: (order.append(p.name), real_save(p, obj))
    )

    def write_json(path, obj):
        order.append(path.name)
        if path.name == "metrics.json" and len(obj["task_aware"]["rows"]) == 3:
            raise Crash  # killed after the last checkpoint, before the last metrics.json
        real_json(path, obj)

    monkeypatch.setattr(runio, "write_json", write_json)
    with pytest.raises(Crash):
        fit(_model(bench, seed=3), bench, make_method("finetune"), run_dir=run, epochs=2, seed=5)
    first = [n for n in order if n in ("checkpoint.pt", "metrics.json")]
    assert first[:2] == ["checkpoint.pt", "metrics.json"]
    monkeypatch.setattr(runio, "write_json", real_json)
    steps = CrashAfter(1)  # resuming must not train: one step would raise
    fit(_model(bench, seed=3), bench, steps, run_dir=run, resume=True, epochs=2, seed=5)
    assert (full / "metrics.json").read_bytes() == (run / "metrics.json").read_bytes()


def test_shared_head_ignores_task_ids(bench):
    model = _model(bench, head="shared")
    r = fit(model, bench, make_method("finetune"), epochs=2, lr=0.1)
    assert r.task_aware.rows == r.task_agnostic.rows
