"""GDumb: the greedy class-balanced sampler, retraining from the initial state on the memory
alone, CutMix and the warm-restart schedule."""

from __future__ import annotations

import math

import pytest
import torch

from retain.engine import fit
from retain.engine.trainer import Trainer
from retain.methods import make_method
from retain.methods.gdumb import GDumb, GreedyClassBalancedMemory, WarmRestartSchedule, cutmix
from retain.models import ContinualModel
from tests.synthetic import TinyBackbone, blobs


def _stream(counts: list[int], seed: int = 0) -> torch.Tensor:
    """Labels of a stream with ``counts[c]`` samples of class ``c``, shuffled."""
    y = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def _offer(memory: GreedyClassBalancedMemory, y: torch.Tensor, chunk: int = 7) -> None:
    """Offer ``y`` in chunks (x: each sample's stream position, to find it again); the
    memory never holds more than its size after any chunk."""
    for lo in range(0, len(y), chunk):
        part = y[lo : lo + chunk]
        x = torch.arange(lo, lo + len(part), dtype=torch.float32).unsqueeze(1)
        memory.add(x, part, torch.zeros_like(part), part)
        assert len(memory) <= memory.size
        assert int((memory.classes >= 0).sum()) == len(memory)


def test_sampler_balances_skewed_classes_within_one_and_never_exceeds_k():
    memory = GreedyClassBalancedMemory(50, seed=0)
    counts = [400, 6, 90, 60, 200]  # class 1 has fewer samples than its share
    y = _stream(counts)
    _offer(memory, y, chunk=11)
    got = memory.counts()
    assert len(memory) == 50
    assert sum(got.values()) == 50
    assert got[1] == 6  # every sample of the poor class is kept
    rich = [n for c, n in got.items() if c != 1]
    assert max(rich) - min(rich) <= 1
    # the stored inputs are the stream samples of the stored classes
    stored = memory.get_all()
    positions = stored["x"].squeeze(1).long()
    assert torch.equal(y[positions], stored["class"])
    assert len(set(positions.tolist())) == 50


def test_sampler_keeps_every_sample_of_a_class_with_fewer_than_its_share():
    memory = GreedyClassBalancedMemory(30, seed=1)
    _offer(memory, torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(4).long()]))
    _offer(memory, torch.full((100,), 2, dtype=torch.long))
    assert memory.counts() == {0: 13, 1: 4, 2: 13}


def test_sampler_evicts_only_from_the_largest_class():
    memory = GreedyClassBalancedMemory(20, seed=2)
    y = _stream([150, 7, 40, 90], seed=3)
    for label in y.tolist():
        before = memory.counts()
        slot = int(
            memory.add(
                torch.zeros(1, 1),
                torch.tensor([label]),
                torch.zeros(1).long(),
                torch.tensor([label]),
            )[0]
        )
        after = memory.counts()
        lost = [c for c in before if after.get(c, 0) < before[c]]
        if sum(before.values()) < 20:  # not full: stored, nothing evicted
            assert slot >= 0 and not lost
        elif slot < 0:  # dropped: nothing changed
            assert after == before
        else:
            assert len(lost) == 1 and before[lost[0]] == max(before.values())
            assert lost[0] != label and after[label] == before.get(label, 0) + 1


def test_sampler_state_resumes_the_same_evictions():
    y = _stream([120, 30, 80], seed=4)
    a = GreedyClassBalancedMemory(25, seed=5)
    _offer(a, y[:100])
    b = GreedyClassBalancedMemory(25)
    b.load_state_dict(a.state_dict())
    _offer(a, y[100:])
    _offer(b, y[100:])
    assert torch.equal(a.get_all()["x"], b.get_all()["x"])
    assert torch.equal(a.classes, b.classes)


def test_sampler_refuses_a_size_below_one():
    with pytest.raises(ValueError, match="memory size"):
        GreedyClassBalancedMemory(0)


class Recording(GDumb):
    """GDumb that records the model at the start of every retraining and every batch's
    inputs and the memory's inputs when it was drawn."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.starts: list[dict[str, torch.Tensor]] = []
        self.trained: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_epoch(self, task, epoch):
        if epoch == 0:
            self.starts.append({k: v.clone() for k, v in self.model.state_dict().items()})

    def loss(self, batch, task):
        self.trained.append((batch.x.clone(), self.memory.get_all()["x"].clone()))
        return super().loss(batch, task)


def _model(bench, seed=0):
    torch.manual_seed(seed)
    return ContinualModel(TinyBackbone(), bench.classes_per_task)


def test_model_is_reset_to_its_initial_state_before_every_retraining():
    bench = blobs(n_tasks=3, per_class=40)
    model = _model(bench)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    method = Recording(memory_size=24, epochs=2, batch_size=8)
    fit(model, bench, method, epochs=1, seed=0)
    assert len(method.starts) == 3
    for start in method.starts:
        assert start.keys() == initial.keys()
        assert all(torch.equal(start[k], initial[k]) for k in initial)
    # and training moved it away from there
    assert not all(torch.equal(model.state_dict()[k], initial[k]) for k in initial)


def test_training_uses_only_samples_in_the_memory():
    bench = blobs(n_tasks=3, per_class=40)
    method = Recording(memory_size=24, epochs=3, batch_size=5, cutmix_prob=0.0)
    fit(_model(bench), bench, method, epochs=1, seed=0)
    assert method.trained
    for x, stored in method.trained:
        assert len(stored) <= 24
        # every row is a row of the memory at that time
        assert bool((x.unsqueeze(1) == stored.unsqueeze(0)).all(-1).any(1).all())
    # the samples the memory dropped or evicted were never trained on: at most the 24
    # samples of every retraining's memory (of 240 offered)
    seen = torch.cat([x for x, _ in method.trained])
    stream = torch.cat([t.x_train for t in bench])
    used = (stream.unsqueeze(1) == seen.unsqueeze(0)).all(-1).any(1)
    assert 24 <= int(used.sum()) <= 3 * 24


def test_every_epoch_is_one_pass_over_the_memory():
    bench = blobs(n_tasks=2, per_class=40)
    epochs = []
    run_epoch = Trainer.run_epoch

    def counted(self, task, optimizer, bar=None, **kw):
        n = sum(len(b) for b in self.method.batches(task, 64, torch.Generator()))
        epochs.append((task.id, n))
        return run_epoch(self, task, optimizer, bar, **kw)

    Trainer.run_epoch = counted
    try:
        fit(_model(bench), bench, make_method("gdumb", memory_size=30, epochs=2), seed=0)
    finally:
        Trainer.run_epoch = run_epoch
    assert epochs == [(0, 30), (0, 30), (1, 30), (1, 30)]


def test_same_seed_gives_the_same_run_with_cutmix():
    bench = blobs(n_tasks=2, per_class=40)
    runs = []
    for _ in range(2):
        model = _model(bench)
        r = fit(model, bench, make_method("gdumb", memory_size=30, epochs=3), seed=3)
        runs.append((r.task_agnostic.rows, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    other = fit(_model(bench), bench, make_method("gdumb", memory_size=30, epochs=3), seed=4)
    assert other.task_agnostic.rows != runs[0][0] or other.task_aware.rows != runs[0][0]


def test_cutmix_replaces_one_box_and_lam_is_its_complement():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(4 * 2 * 8 * 8, dtype=torch.float32).reshape(4, 2, 8, 8)
    for _ in range(20):
        mixed, perm, lam = cutmix(x, g, 1.0)
        changed = (mixed != x).any(1)  # [N, H, W]
        from_partner = (mixed == x[perm]).all(1)
        assert bool((~changed | from_partner).all())
        box = changed.any(0)  # the same box in every row (rows whose partner is itself: none)
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        if len(rows):
            h = int(rows.max() - rows.min() + 1)
            w = int(cols.max() - cols.min() + 1)
            assert int(box.sum()) == h * w
            assert math.isclose(lam, 1 - h * w / 64)
    flat = torch.randn(6, 10)
    mixed, perm, lam = cutmix(flat, g, 1.0)
    changed = (mixed != flat).any(0)
    assert math.isclose(lam, 1 - int(changed.sum()) / 10) or bool((perm == torch.arange(6)).any())


def test_schedule_warms_up_then_restarts_like_sgdr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.05)
    schedule = WarmRestartSchedule(opt, min_lr=0.0005)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    mid = 0.0005 + (0.05 - 0.0005) / 2
    quarter = 0.0005 + (0.05 - 0.0005) * (1 + math.cos(math.pi / 4)) / 2
    expected = [0.005, 0.05, 0.05, mid, 0.05, quarter, mid]
    assert all(math.isclose(a, b) for a, b in zip(lrs, expected, strict=False))
    # the official schedule: CosineAnnealingWarmRestarts(T_0=1, T_mult=2) stepped from epoch 2
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt2, 1, 2, eta_min=0.0005)
    official = [0.005, 0.05]
    for _ in range(6):
        opt2.step()
        ref.step()
        official.append(opt2.param_groups[0]["lr"])
    assert all(math.isclose(a, b) for a, b in zip(lrs, official, strict=True))


def test_gradient_norm_is_clipped():
    bench = blobs(n_tasks=1, per_class=40)
    norms = []

    class Clipped(GDumb):
        def after_backward(self, batch, task):
            super().after_backward(batch, task)
            grads = [p.grad for p in self.trainable_parameters(task) if p.grad is not None]
            norms.append(float(torch.cat([g.reshape(-1) for g in grads]).norm()))

    method = Clipped(memory_size=30, epochs=2, clip=0.01, lr=1.0, min_lr=0.0)
    fit(_model(bench), bench, method, seed=0)
    assert norms and max(norms) <= 0.01 * (1 + 1e-5)


@pytest.mark.parametrize(
    "kw", [{"memory_size": 0}, {"epochs": 0}, {"min_lr": 1.0}, {"cutmix_prob": 2.0}, {"clip": -1}]
)
def test_bad_arguments_are_refused(kw):
    with pytest.raises(ValueError):
        make_method("gdumb", **kw)
