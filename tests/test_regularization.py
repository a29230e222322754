"""The quadratic penalty, EWC/MAS/SI/LwF mechanisms, resume, and a behavioural check."""

import json

import pytest
import torch
from torch import nn

from retain.core.distill import kd_cross_entropy, kd_kl_divergence
from retain.core.importance import (
    FisherImportance,
    MASImportance,
    PathIntegral,
    fisher_diagonal,
    task_batches,
    task_forward,
)
from retain.core.penalty import QuadraticPenalty
from retain.data import Benchmark, make_tasks
from retain.engine import fit
from retain.methods import make_method
from retain.methods.ewc import EWC
from retain.models import ContinualModel
from tests.own_loop import train_task
from tests.synthetic import TinyBackbone, blobs


def _model(bench, seed=0, head="task", dropout=0.0):
    torch.manual_seed(seed)
    return ContinualModel(TinyBackbone(dropout=dropout), bench.classes_per_task, head=head)


def _train(method, task, steps=None, lr=0.1, finish=True):
    """One epoch of the method's batches through the hooks, as a user's own loop would."""
    train_task(method, task, steps=steps, lr=lr, finish=finish)


# ------------------------------------------------------------------ the penalty


def test_penalty_is_zero_at_the_anchor_and_grows_along_high_importance():
    theta = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    pen = QuadraticPenalty({"w": theta})
    assert pen().item() == 0.0 and not pen.active
    pen.consolidate({"w": torch.tensor([10.0, 0.1, 0.0])})
    assert pen().item() == 0.0  # exactly zero at the anchor
    values = []
    for d in (0.1, 0.2, 0.4):
        for i in range(3):
            with torch.no_grad():
                theta.copy_(torch.tensor([1.0, 2.0, 3.0]))
                theta[i] += d
            values.append(pen().item())
    v = torch.tensor(values).view(3, 3)  # [distance, direction]
    assert torch.allclose(v[:, 0], 10 * torch.tensor([0.01, 0.04, 0.16]))
    assert torch.allclose(v[:, 1], 0.1 * torch.tensor([0.01, 0.04, 0.16]))
    assert torch.all(v[:, 2] == 0)  # no importance, no cost
    assert torch.all(v[1:, 0] > v[:-1, 0])  # grows with distance
    assert torch.all(v[:, 0] > 50 * v[:, 1])  # much faster along the important direction


def test_separate_mode_equals_the_sum_of_per_task_terms():
    torch.manual_seed(0)
    theta = nn.Parameter(torch.randn(50))
    pen = QuadraticPenalty({"w": theta}, mode="separate")
    terms = []
    for _ in range(4):
        f = torch.rand(50) * (torch.rand(50) > 0.3)  # some zero importances
        a = torch.randn(50)
        pen.consolidate({"w": f}, {"w": a})
        terms.append((f, a))
    assert pen.n_tasks == 4
    want = sum((f * (theta - a).square()).sum() for f, a in terms)
    got = pen()
    assert torch.allclose(got, want, rtol=1e-5)
    (g_want,) = torch.autograd.grad(want, theta)
    (g_got,) = torch.autograd.grad(got, theta)
    assert torch.allclose(g_got, g_want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(pen.gradient("w", theta.detach()), g_want, rtol=1e-5, atol=1e-6)


def test_online_modes():
    theta = nn.Parameter(torch.zeros(2))
    ema = QuadraticPenalty({"w": theta}, mode="ema", alpha=0.5)
    tot = QuadraticPenalty({"w": theta}, mode="sum")
    for f, a in ((torch.tensor([4.0, 0.0]), 1.0), (torch.tensor([2.0, 2.0]), 3.0)):
        ema.consolidate({"w": f}, {"w": torch.full((2,), a)})
        tot.consolidate({"w": f}, {"w": torch.full((2,), a)})
    # FACIL's online EWC: F starts at 0, F <- 0.5 F + 0.5 F_new; the latest anchor only
    assert torch.equal(ema.weight["w"], torch.tensor([0.5 * 0.5 * 4 + 0.5 * 2, 0.5 * 2]))
    assert torch.equal(tot.weight["w"], torch.tensor([6.0, 2.0]))
    assert torch.equal(tot.center["w"], torch.full((2,), 3.0))
    assert torch.allclose(tot(), torch.tensor(6.0 * 9 + 2.0 * 9))


def test_mean_mode_is_the_running_mean_of_the_tasks_importances():
    theta = nn.Parameter(torch.zeros(3))
    pen = QuadraticPenalty({"w": theta}, mode="mean")
    fs = [
        torch.tensor([3.0, 0.0, 1.0]),
        torch.tensor([0.0, 6.0, 1.0]),
        torch.tensor([6.0, 3.0, 4.0]),
    ]
    for t, f in enumerate(fs):
        pen.consolidate({"w": f}, {"w": torch.full((3,), float(t))})
        want = torch.stack(fs[: t + 1]).mean(0)  # HAT's (t F + F_t) / (t + 1)
        assert torch.allclose(pen.weight["w"], want)
    assert torch.equal(pen.center["w"], torch.full((3,), 2.0))  # the latest anchor
    # EWC with online=True and alpha=None consolidates this way
    bench = blobs()
    ewc = make_method("ewc", online=True, alpha=None)
    ewc.setup(_model(bench), None)
    assert ewc.penalty.mode == "mean"
    other = make_method("ewc", online=True)
    other.setup(_model(bench), None)
    assert other.penalty.mode == "ema"


def test_penalty_state_dict_round_trip():
    theta = nn.Parameter(torch.randn(5))
    pen = QuadraticPenalty({"w": theta})
    for _ in range(2):
        pen.consolidate({"w": torch.rand(5)}, {"w": torch.randn(5)})
    other = QuadraticPenalty({"w": theta})
    other.load_state_dict(pen.state_dict())
    assert torch.equal(other(), pen())
    with pytest.raises(ValueError, match="mode"):
        QuadraticPenalty({"w": theta}, mode="sum").load_state_dict(pen.state_dict())


# ------------------------------------------------------------------ EWC / MAS / SI


def test_ewc_penalty_is_exactly_lambda_half_fisher_distance():
    bench = blobs()
    model = _model(bench)
    ewc = make_method("ewc", lamb=300.0)
    ewc.setup(model, None)
    _train(ewc, bench[0])
    anchor = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    fisher = fisher_diagonal(
        model,
        task_batches(model, bench[0]),
        task_forward(0),
        params={"backbone." + n: p for n, p in model.backbone.named_parameters()},
    )
    assert set(ewc.penalty.weight) == {"backbone." + n for n in anchor}  # backbone only
    assert ewc.regularizer().item() == 0.0  # at the anchor
    # the task-1 loss is CE + penalty, and the penalty is the formula
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    want = sum(
        300.0 / 2 * (fisher["backbone." + n] * (p - anchor[n]).square()).sum()
        for n, p in model.backbone.named_parameters()
    )
    assert want.item() > 0
    assert torch.allclose(ewc.regularizer(), want, rtol=1e-5)
    ewc.before_task(bench[1])
    b = next(ewc.batches(bench[1], 16, torch.Generator().manual_seed(0)))
    ce = make_method("finetune")
    ce.setup(model, None)
    ce.before_task(bench[1])
    assert torch.allclose(ewc.loss(b, bench[1]), ce.loss(b, bench[1]) + want, rtol=1e-5)


def test_ewc_separate_keeps_every_task_and_online_only_the_last_anchor():
    bench = blobs()
    sep, onl = make_method("ewc"), make_method("ewc", online=True)
    anchors = []
    for m in (sep, onl):
        model = _model(bench)
        m.setup(model, None)
        for t in (0, 1):
            _train(m, bench[t])
            if m is sep:
                anchors.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert sep.penalty.n_tasks == onl.penalty.n_tasks == 2
    name = "backbone.net.0.weight"
    # online: the anchor is the latest parameters, so the penalty is zero there
    assert onl.regularizer().item() == 0.0
    # separate: the first task's term still pulls towards the first anchor
    assert sep.regularizer().item() > 0.0
    assert not torch.equal(sep.penalty.center[name], anchors[1][name])


def test_importance_is_configuration_and_mas_si_share_the_consumer():
    ewc_mas = make_method("ewc", importance="mas", importance_args={"granularity": "sample"})
    assert isinstance(ewc_mas.estimator, MASImportance)
    assert ewc_mas.estimator.granularity == "sample"
    mas, si = make_method("mas"), make_method("si", c=0.5, xi=0.1)
    assert isinstance(mas, EWC) and isinstance(si, EWC)
    assert isinstance(mas.estimator, MASImportance) and isinstance(si.estimator, PathIntegral)
    assert (mas.scale, si.scale, EWC.scale) == (1.0, 1.0, 0.5)
    assert si.lamb == 0.5 and si.estimator.xi == 0.1
    assert isinstance(make_method("ewc").estimator, FisherImportance)
    with pytest.raises(ValueError):
        make_method("ewc", protect="heads")


def test_mas_sums_importance_over_tasks_with_the_latest_anchor():
    bench = blobs()
    model = _model(bench)
    mas = make_method("mas", lamb=0.5)
    mas.setup(model, None)
    est = MASImportance()
    est.setup(mas.penalty.params)
    _train(mas, bench[0])
    omega0 = est.compute(model, bench[0])
    _train(mas, bench[1])
    omega1 = est.compute(model, bench[1])
    for n in omega0:
        assert torch.allclose(mas.penalty.weight[n], omega0[n] + omega1[n], rtol=1e-5)
        assert torch.equal(mas.penalty.center[n], mas.penalty.params[n].detach())


def test_si_accumulates_the_path_integral_through_the_hooks():
    """SI's omega after a task = sum over steps of -(task gradient) * dtheta, by hand."""
    bench = blobs()
    model = _model(bench)
    si = make_method("si", c=0.5, xi=0.01)
    si.setup(model, None)
    _train(si, bench[0])  # task 0: no penalty yet
    params = si.penalty.params
    start = {n: p.detach().clone() for n, p in params.items()}
    by_hand = {n: torch.zeros_like(p) for n, p in params.items()}
    task = bench[1]
    si.before_task(task)
    opt = torch.optim.SGD(si.trainable_parameters(task), lr=0.1, momentum=0.9)
    ft = make_method("finetune")
    ft.setup(model, None)
    ft.before_task(task)
    for b in si.batches(task, 16, torch.Generator().manual_seed(0)):
        g_task = torch.autograd.grad(ft.loss(b, task), list(params.values()))
        before = [p.detach().clone() for p in params.values()]
        loss = si.loss(b, task)
        opt.zero_grad()
        loss.backward()
        opt.step()
        si.after_step(b, task)
        for (n, p), g, p0 in zip(params.items(), g_task, before, strict=True):
            by_hand[n] -= g * (p.detach() - p0)
    for n in params:
        assert torch.allclose(si.estimator.omega[n], by_hand[n], rtol=1e-4, atol=1e-6)
    old_weight = {n: w.clone() for n, w in si.penalty.weight.items()}
    si.after_task(task)
    for n, p in params.items():
        new = by_hand[n] / ((p.detach() - start[n]).square() + 0.01)
        assert torch.allclose(si.penalty.weight[n], (old_weight[n] + new).clamp_min(0), atol=1e-5)


# ------------------------------------------------------------------ LwF


def test_kd_of_a_distribution_with_itself_is_its_entropy():
    z = torch.randn(6, 5) * 3
    for T in (1.0, 2.0, 4.0):
        p = torch.softmax(z / T, 1)
        entropy = -(p * p.log()).sum(1).mean()
        assert torch.allclose(kd_cross_entropy(z, z, T), entropy, atol=1e-6)
        assert float(kd_kl_divergence(z, z, T)) == pytest.approx(0.0, abs=1e-6)
        # and it is the minimum over students
        assert kd_cross_entropy(z + torch.randn(6, 5), z, T) > entropy


@pytest.mark.parametrize("kd_heads", ["separate", "concat"])
def test_lwf_distils_the_old_models_old_heads(kd_heads):
    bench = blobs()
    model = _model(bench)
    lwf = make_method("lwf", lamb=2.0, temperature=2.0, kd_heads=kd_heads)
    lwf.setup(model, None)
    _train(lwf, bench[0])
    _train(lwf, bench[1])  # old model = model after task 1 (heads 0 and 1 are old)
    task = bench[2]
    lwf.before_task(task)
    b = next(lwf.batches(task, 16, torch.Generator().manual_seed(0)))
    ce = torch.nn.functional.cross_entropy(model(b.x, task_id=2), b.y)
    # current model == old model: L_old is the entropy of the old softened outputs
    old = [lwf.old_model(b.x, task_id=j) for j in (0, 1)]
    if kd_heads == "concat":
        old = [torch.cat(old, 1)]
    ent = sum(-(torch.softmax(o / 2, 1) * torch.log_softmax(o / 2, 1)).sum(1).mean() for o in old)
    loss = lwf.loss(b, task)
    assert torch.allclose(loss, ce + 2.0 * ent, atol=1e-6)
    # ... and its gradient vanishes there (KD is at its minimum)
    feats = model.features(b.x)
    kd = lwf.distillation(feats, b.x)
    grads = torch.autograd.grad(kd, list(model.backbone.parameters()))
    assert all(g.abs().max() < 1e-6 for g in grads)
    # the old model's outputs are the targets: changing it changes the loss; the current
    # task's head and future heads play no part in L_old
    with torch.no_grad():
        model.heads[2].weight.add_(1.0)
        assert torch.allclose(lwf.distillation(model.features(b.x), b.x), kd)
        lwf.old_model.heads[0].weight.mul_(-1)
        assert not torch.allclose(lwf.distillation(model.features(b.x), b.x), kd)


def test_lwf_first_task_is_plain_cross_entropy_and_the_old_model_is_frozen():
    bench = blobs()
    model = _model(bench)
    lwf = make_method("lwf")
    ft = make_method("finetune")
    lwf.setup(model, None)
    ft.setup(model, None)
    lwf.before_task(bench[0])
    ft.before_task(bench[0])
    b = next(lwf.batches(bench[0], 16, torch.Generator().manual_seed(0)))
    assert torch.equal(lwf.loss(b, bench[0]), ft.loss(b, bench[0]))
    _train(lwf, bench[0])
    frozen = {k: v.clone() for k, v in lwf.old_model.state_dict().items()}
    _train(lwf, bench[1], finish=False)
    assert all(not p.requires_grad for p in lwf.old_model.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in lwf.old_model.state_dict().items())
    assert not torch.equal(frozen["backbone.net.0.weight"], model.backbone.net[0].weight)


# ------------------------------------------------------------------ engine: resume, behaviour


class Crash(Exception):
    pass


def _crashing(name, n, **kw):
    cls = type(make_method(name, **kw))

    class Crashing(cls):
        def after_step(self, batch, task):
            super().after_step(batch, task)
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps == n:
                raise Crash

    return Crashing(**kw)


# kept beside tests/test_contract.py (every method at its defaults): online EWC with sampled
# labels (a running importance and random draws in after_task), on a shared head
@pytest.mark.parametrize(
    "name,kw",
    [("ewc", {"lamb": 50.0, "online": True, "importance_args": {"labels": "sample"}})],
)
@pytest.mark.parametrize("crash_at", [14, 23])  # 9 steps a task: mid task 1, mid task 2
def test_resume_after_kill_gives_identical_metrics(tmp_path, name, kw, crash_at):
    bench = blobs(n_tasks=3, per_class=24)  # 36 samples/task -> 3 batches of 16 per epoch

    kwargs = dict(epochs=3, lr=0.05, batch_size=16, momentum=0.9, checkpoint_every=1, seed=5)
    full = tmp_path / "full"
    fit(_model(bench, 3, "shared", 0.2), bench, make_method(name, **kw), run_dir=full, **kwargs)
    broken = tmp_path / "broken"
    with pytest.raises(Crash):
        fit(
            _model(bench, 3, "shared", 0.2),
            bench,
            _crashing(name, crash_at, **kw),
            run_dir=broken,
            **kwargs,
        )
    fit(
        _model(bench, 3, "shared", 0.2),
        bench,
        make_method(name, **kw),
        run_dir=broken,
        resume=True,
        **kwargs,
    )
    a = json.loads((full / "metrics.json").read_text())
    assert a == json.loads((broken / "metrics.json").read_text())
    ev = [json.loads(x) for x in (full / "events.jsonl").read_text().splitlines()]
    ev2 = [json.loads(x) for x in (broken / "events.jsonl").read_text().splitlines()]
    assert [(e["task"], e["epoch"], e["loss"]) for e in ev] == [
        (e["task"], e["epoch"], e["loss"]) for e in ev2
    ]


def rotated_blobs(n_tasks=3, n_classes=4, per_class=50, d=8, seed=0):
    """Domain-incremental blobs: the same classes in every task, the inputs rotated by a random
    orthogonal matrix per task (a tiny permuted-MNIST). A shared head must serve all tasks."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, d, generator=g) * 2

    def sample(n):
        y = torch.arange(n_classes).repeat_interleave(n)
        return centers[y] + torch.randn(len(y), d, generator=g), y

    (xtr, ytr), (xte, yte) = sample(per_class), sample(per_class // 2)
    splits = []
    for _ in range(n_tasks):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        splits.append((xtr @ q, ytr, xte @ q, yte))
    return Benchmark("rotated-blobs", make_tasks(splits), (d,))


@pytest.mark.parametrize("seed", [0, 1])
def test_regularised_methods_forget_less_than_finetune(seed):
    """Finetune overwrites the shared features and head; every regulariser keeps more."""
    bench = rotated_blobs(seed=2)
    settings = {
        "finetune": {},
        "ewc": {"lamb": 1000.0},
        "mas": {"lamb": 1.0},
        "si": {"c": 0.3},
        "lwf": {"lamb": 3.0},
    }
    bwt = {}
    for name, kw in settings.items():
        torch.manual_seed(seed)
        model = ContinualModel(TinyBackbone(d=32), bench.classes_per_task, head="shared")
        r = fit(model, bench, make_method(name, **kw), epochs=8, lr=0.02, batch_size=16)
        bwt[name] = r.task_aware.bwt()
    assert bwt["finetune"] < -0.3, bwt
    for name in settings:
        if name != "finetune":
            assert bwt[name] > bwt["finetune"] + 0.05, bwt
