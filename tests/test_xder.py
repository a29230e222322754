"""X-DER's mechanisms: the past update, the logit rescaling, the balanced buffer, and DER++ as
the special case with every part off."""

from __future__ import annotations

import pytest
import torch

from retain.core.buffers import ClassBalancedBuffer, balanced_quotas
from retain.data.benchmark import Task
from retain.methods import make_method
from retain.methods.base import Batch, BenchmarkInfo
from retain.methods.xder import XDER, rescale_block, supcon_loss
from retain.models.continual import ContinualModel

CPT = [2, 2, 2]
OFF = [0, 2, 4, 6]


def _model(seed: int = 0) -> ContinualModel:
    torch.manual_seed(seed)
    backbone = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU())
    backbone.out_features = 16
    return ContinualModel(backbone, CPT)


def _task(tid: int, n: int = 40, seed: int = 1) -> Task:
    g = torch.Generator().manual_seed(seed + tid)
    x = torch.randn(n, 5, generator=g)
    y = torch.arange(n) % 2
    return Task(tid, x, y, x[:8], y[:8], [0, 1], class_offset=OFF[tid])


def _method(**kwargs) -> XDER:
    method = XDER(memory_size=12, **kwargs)
    method.setup(_model(), BenchmarkInfo(len(CPT), CPT, (5,)))
    return method


def test_past_update_changes_only_the_finished_task_entries() -> None:
    method = _method(future_update=False)
    method.before_task(_task(0))
    method.after_task(_task(0))  # balanced insertion of task 0's classes
    before = method.buffer.get_all()
    with torch.no_grad():  # the network moves on, as training task 1 would move it
        for p in method.model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    method.before_task(_task(1))
    method._update_past(1)
    after = method.buffer.get_all()
    old = before["task_ids"] == 0
    assert bool(old.all())
    diff = after["logits"] != before["logits"]
    assert bool(diff[:, OFF[1] : OFF[2]].any(dim=1).all())  # every sample's task-1 entries
    assert not bool(diff[:, : OFF[1]].any())  # its own task's entries are kept
    assert not bool(diff[:, OFF[2] :].any())  # and the future heads' entries
    out = method._outputs(before["x"])[:, OFF[1] : OFF[2]]
    gt = before["logits"][
        torch.arange(len(old)), method.model.global_labels(before["y"], before["task_ids"])
    ]
    assert torch.allclose(after["logits"][:, OFF[1] : OFF[2]], rescale_block(out, gt, 0.85))
    for k in ("x", "y", "task_ids", "index"):
        assert torch.equal(after[k], before[k])


def test_past_update_with_future_heads_keeps_own_entries() -> None:
    method = _method(future_update=True)
    method.before_task(_task(0))
    method.after_task(_task(0))
    before = method.buffer.get_all()
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    method._update_past(1)
    diff = method.buffer.get_all()["logits"] != before["logits"]
    assert not bool(diff[:, : OFF[1]].any())
    assert bool(diff[:, OFF[1] :].any(dim=1).all())


def test_rescaling_keeps_the_true_class_maximal_with_margin() -> None:
    torch.manual_seed(3)
    gamma = 0.85
    block = 4 * torch.randn(200, 4)
    gt = 3 * torch.randn(200)
    out = rescale_block(block, gt, gamma)
    top_before, top_after = block.max(1).values, out.max(1).values
    over = top_before > gt
    pos = over & (gt > 0)
    assert bool(pos.any()) and bool((over & (gt <= 0)).any())
    assert torch.allclose(top_after[pos], gamma * gt[pos])  # the margin (1 - gamma) * gt
    assert bool((top_after[over & (gt <= 0)] <= gt[over & (gt <= 0)] - (1 - gamma) + 1e-5).all())
    assert bool((top_after[over] < gt[over]).all())
    assert torch.equal(out[~over], block[~over])  # below the true class: untouched
    # inserted samples: the past heads rescaled, the true class the stored maximum
    method = _method()
    for t in range(2):
        method.before_task(_task(t))
        method.after_task(_task(t))
    stored = method.buffer.get_all()
    new = stored["task_ids"] == 1
    logits = stored["logits"][new]
    gcol = method.model.global_labels(stored["y"][new], stored["task_ids"][new])
    gt_new = logits[torch.arange(len(gcol)), gcol]
    past_top = logits[:, : OFF[1]].max(1).values
    assert bool((past_top <= torch.maximum(gamma * gt_new, gt_new - (1 - gamma)) + 1e-5).all())


def test_balanced_quotas_and_buffer_counts_within_one() -> None:
    q = balanced_quotas(torch.tensor([100, 100, 100]), 200, torch.arange(3))
    assert q.tolist() == [67, 67, 66]
    q = balanced_quotas(torch.tensor([3, 100, 100]), 50, torch.arange(3))
    assert q.tolist() == [3, 24, 23]  # a small group keeps all it has, the others share
    buf = ClassBalancedBuffer(23, seed=0)
    for t, n_classes in enumerate([3, 2, 4]):
        groups = 10 * t + torch.arange(60) % n_classes
        pick, slots = buf.rebalance(groups)
        assert len(set(slots.tolist())) == len(slots)
        assert bool((groups[pick][:, None] == groups[pick][None, :]).sum(1).ge(1).all())
        x = torch.randn(len(pick), 2)
        buf.write(slots, x=x, y=groups[pick], task_ids=torch.full((len(pick),), t))
        counts = buf.counts()
        assert len(buf) == 23 and sum(counts.values()) == 23
        assert max(counts.values()) - min(counts.values()) <= 1, counts
        stored = buf.get_all()
        assert torch.equal(stored["y"], buf.group[stored["index"]])  # groups match the data


def test_parts_off_loss_equals_derpp() -> None:
    off = dict(
        past_update=False,
        online_update=False,
        rescale=False,
        future_preparation=False,
        future_constraint=False,
        past_constraint=False,
        present_head=False,
        balanced=False,
    )
    xder = make_method("xder", memory_size=12, alpha=0.1, beta=0.5, **off)
    derpp = make_method("derpp", memory_size=12, alpha=0.1, beta=0.5)
    model = _model()
    info = BenchmarkInfo(len(CPT), CPT, (5,))
    derpp.setup(model, info)
    xder.setup(model, info)
    task0, task1 = _task(0), _task(1)
    derpp.before_task(task0)
    b0 = Batch(task0.x_train[:10], task0.y_train[:10], torch.zeros(10, dtype=torch.long), 0)
    derpp.loss(b0, task0)
    derpp.after_step(b0, task0)
    derpp.before_task(task1)
    xder.before_task(task1)
    xder.buffer.load_state_dict(derpp.buffer.state_dict())
    b1 = Batch(task1.x_train[:10], task1.y_train[:10], torch.ones(10, dtype=torch.long), 1)
    a, b = xder.loss(b1, task1), derpp.loss(b1, task1)
    assert torch.equal(a, b)
    # the parts on: a different objective on the same batch
    full = make_method("xder", memory_size=12, alpha=0.1, beta=0.5, balanced=False)
    full.setup(model, info)
    full.before_task(task1)
    full.buffer.load_state_dict(derpp.buffer.state_dict())
    assert not torch.allclose(full.loss(b1, task1), b)


def test_supcon_matches_its_formula_on_a_small_case() -> None:
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])  # [n=2, views=2, d]
    labels = torch.tensor([0, 1])
    tau = 0.5
    z = f.reshape(4, 2)
    sim = z @ z.t() / tau
    expected = []
    for i, p in enumerate([1, 0, 3, 2]):  # each view's only positive is its sibling
        others = [a for a in range(4) if a != i]
        expected.append(-(sim[i, p] - torch.logsumexp(sim[i, others], 0)))
    assert torch.allclose(supcon_loss(f, labels, tau), torch.stack(expected).mean())


def test_future_heads_trained_and_bad_arguments() -> None:
    method = _method()
    task = _task(0)
    method.before_task(task)
    params = {id(p) for p in method.trainable_parameters(task)}
    assert all(id(p) in params for p in method.model.head_parameters([0, 1, 2]))
    b = Batch(task.x_train[:10], task.y_train[:10], torch.zeros(10, dtype=torch.long), 0)
    method.loss(b, task).backward()
    grad = method.model.head_parameters([2])[0].grad
    assert grad is not None and bool(grad.abs().sum() > 0)  # the contrastive term reaches it
    for bad in ({"gamma": 0}, {"gamma": 1.5}, {"views": 1}, {"temperature": 0}, {"m": -1}):
        with pytest.raises(ValueError):
            XDER(**bad)


def test_online_update_rewrites_current_heads_of_replayed_past_samples() -> None:
    method = _method(future_update=False)
    method.before_task(_task(0))
    method.after_task(_task(0))
    task = _task(1)
    method.before_task(task)
    with torch.no_grad():  # the network has moved on since the samples were stored
        for p in method.model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    before = method.buffer.get_all()["logits"].clone()
    b = Batch(task.x_train[:6], task.y_train[:6], torch.ones(6, dtype=torch.long), 1)
    method.loss(b, task)  # first replay of every sample drawn: probability 1
    after = method.buffer.get_all()["logits"]
    changed = (after != before).any(dim=1)
    assert bool(changed.any())
    assert int(changed.sum()) == int((method.replayed > 0).sum())  # exactly the replayed ones
    diff = after != before
    assert not bool(diff[:, : OFF[1]].any()) and not bool(diff[:, OFF[2] :].any())
    method.after_task(task)
    assert not bool(method.replayed.any())  # the odds restart with the next task
