"""SPG's mechanism: the importance of Eqs. 1-4 by hand, the soft mask on the applied gradient,
CHI, and an importance pass that leaves the model untouched."""

import copy

import pytest
import torch
import torch.nn.functional as F

from retain.core.estimators import make_importance
from retain.core.importance import task_batches
from retain.core.spg_importance import (
    SPGImportance,
    gradient_importance,
    spg_losses,
    spg_normalize,
)
from retain.data import Benchmark, make_tasks
from retain.methods import make_method
from retain.methods.spg import SPG
from retain.models import ContinualModel
from retain.models.alexnet import AlexNet
from tests.own_loop import train_task
from tests.synthetic import TinyBackbone, blobs


def _model(bench, seed=0, dropout=0.0, head="task"):
    torch.manual_seed(seed)
    return ContinualModel(TinyBackbone(dropout=dropout), bench.classes_per_task, head=head)


def _train(method, task, lr=0.1, epochs=1, finish=True):
    """Epochs of the method's batches through the hooks, as a user's own loop would."""
    g = torch.Generator().manual_seed(task.id)
    train_task(method, task, g, lr=lr, epochs=epochs, finish=finish)


def _spg(model, **kw):
    m = make_method("spg", **kw)
    m.setup(model, None)
    return m


def _by_hand(model, task, chi=True, eps=1e-12, batch_size=64):
    """Eqs. 1-3 written out: summed batch gradients of CE on head t and of the plain sum of
    head tau's logits on task t's data, |tanh((g - mean) / sqrt(var + eps))|, max over tau."""
    params = {"backbone." + n: p for n, p in model.backbone.named_parameters()}
    x_all, y_all = task.x_train, task.y_train
    losses = [lambda x, y: F.cross_entropy(model(x, task_id=task.id), y)]
    if chi:
        losses += [lambda x, y, tau=tau: model(x, task_id=tau).sum() for tau in range(task.id)]
    out = None
    for loss_fn in losses:
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        for i in range(0, len(y_all), batch_size):
            g = torch.autograd.grad(
                loss_fn(x_all[i : i + batch_size], y_all[i : i + batch_size]),
                list(params.values()),
            )
            for n, gi in zip(params, g, strict=True):
                total[n] += gi
        gamma = {}
        for n, g in total.items():
            z = (g - g.mean()) / torch.sqrt(g.var(unbiased=True) + eps)
            gamma[n] = torch.tanh(z).abs()
        out = gamma if out is None else {n: torch.maximum(out[n], gamma[n]) for n in out}
    return out


# ------------------------------------------------------------------ Eqs. 1-2


def test_normalize_is_abs_tanh_of_the_standardised_tensor():
    g = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -7.0]])
    z = (g - g.mean()) / torch.sqrt(g.var() + 1e-12)
    assert torch.allclose(spg_normalize(g), torch.tanh(z).abs())
    assert torch.all(spg_normalize(g) >= 0) and torch.all(spg_normalize(g) <= 1)
    # a large negative deviation is as important as a large positive one (the abs)
    assert (
        spg_normalize(torch.tensor([0.0, 0.0, 0.0, 10.0]))[3]
        == spg_normalize(torch.tensor([0.0, 0.0, 0.0, -10.0]))[3]
    )
    # scale-invariant; constant / zero / single-element tensors give 0, never NaN
    assert torch.allclose(spg_normalize(1e-3 * g), spg_normalize(g), atol=1e-5)  # Var >> eps
    for t in (torch.zeros(5), torch.full((3, 2), 4.0), torch.tensor([3.0])):
        assert torch.equal(spg_normalize(t), torch.zeros_like(t))


# ------------------------------------------------------------------ Eqs. 1-3 and CHI


def test_importance_matches_the_hand_computation_of_eqs_1_to_3():
    bench = blobs(n_tasks=3)
    model = _model(bench)
    spg = _spg(model)
    _train(spg, bench[0])
    _train(spg, bench[1])
    _train(spg, bench[2], finish=False)
    for chi in (True, False):
        est = SPGImportance(chi=chi)
        est.setup(spg.mask.params)
        got = est.compute(model, bench[2])
        want = _by_hand(model, bench[2], chi=chi)
        for n in want:
            assert torch.allclose(got[n], want[n], atol=1e-5), n
            assert got[n].min() >= 0 and got[n].max() <= 1


def test_chi_uses_the_earlier_heads_on_the_current_tasks_data():
    bench = blobs(n_tasks=3)
    model = _model(bench)
    calls = []
    real_forward = model.forward

    def spy(x, task_id=None, upto=None):
        calls.append((task_id, upto, x))
        return real_forward(x, task_id=task_id, upto=upto)

    model.forward = spy
    task = bench[2]
    est = SPGImportance(batch_size=20)
    est.setup({n: p for n, p in model.named_parameters()})
    gamma = est.compute(model, task)
    heads = [c[0] for c in calls]
    n_batches = -(-len(task.y_train) // 20)
    # one pass of CE on head 2, then one pass of the logit sum on each earlier head 0, 1
    assert heads == [2] * n_batches + [0] * n_batches + [1] * n_batches
    for tau in (2, 0, 1):
        xs = torch.cat([c[2] for c in calls if c[0] == tau])
        assert torch.equal(xs, task.x_train)  # the current task's data, every time
    # the old heads' losses reach the old heads' parameters (the logit sum), the future head
    # plays no part; the losses of Eq. 2 themselves:
    assert gamma["heads.0.weight"].sum() > 0 and gamma["heads.1.weight"].sum() > 0
    assert gamma["heads.2.weight"].sum() > 0
    model.forward = real_forward
    losses = spg_losses(2)
    x, y = task.x_train[:5], task.y_train[:5]
    assert len(losses) == 3
    assert torch.allclose(losses[0](model, x, y), F.cross_entropy(model(x, task_id=2), y))
    assert torch.allclose(losses[1](model, x, y), model(x, task_id=0).sum())
    assert torch.allclose(losses[2](model, x, y), model(x, task_id=1).sum())
    assert len(spg_losses(2, chi=False)) == 1 and len(spg_losses(0)) == 1


def test_without_chi_only_the_old_head_terms_are_missing():
    bench = blobs(n_tasks=3)
    model = _model(bench)
    spg = _spg(model)
    for t in (0, 1):
        _train(spg, bench[t])
    params = spg.mask.params
    task = bench[2]
    batches = task_batches(model, task)
    with_chi = gradient_importance(model, batches, spg_losses(2, chi=True), params=params)
    no_chi = gradient_importance(model, batches, spg_losses(2, chi=False), params=params)
    old_only = gradient_importance(model, batches, spg_losses(2)[1:], params=params)
    for n in params:
        assert torch.equal(with_chi[n], torch.maximum(no_chi[n], old_only[n]))
    assert any(not torch.equal(with_chi[n], no_chi[n]) for n in params)
    # on the first task there are no old heads: identical
    a, b = SPGImportance(chi=True), SPGImportance(chi=False)
    a.setup(params)
    b.setup(params)
    ga, gb = a.compute(model, bench[0]), b.compute(model, bench[0])
    assert all(torch.equal(ga[n], gb[n]) for n in params)
    # and the method's option reaches the estimator
    assert make_method("spg", chi=False).estimator.chi is False


# ------------------------------------------------------------------ Eq. 4 and the soft mask


def test_gamma_is_in_unit_interval_never_decreases_and_is_the_running_max():
    bench = blobs(n_tasks=4)
    model = _model(bench)
    spg = _spg(model)
    prev = None
    for t in range(4):
        _train(spg, bench[t], finish=False)
        est = SPGImportance()
        est.setup(spg.mask.params)
        gamma_t = est.compute(model, bench[t])  # deterministic: no dropout here
        spg.after_task(bench[t])
        for n, g in spg.mask.gamma.items():
            assert g.min() >= 0 and g.max() <= 1
            want = gamma_t[n] if prev is None else torch.maximum(prev[n], gamma_t[n])
            assert torch.equal(g, want)  # Eq. 4
            if prev is not None:
                assert torch.all(g >= prev[n])
        prev = {n: g.clone() for n, g in spg.mask.gamma.items()}
    # only the accumulated importance is kept: one tensor per masked parameter
    assert set(spg.mask.gamma) == {"backbone." + n for n, _ in model.backbone.named_parameters()}
    state = spg.state_dict()
    tensors = [v for v in state["mask"]["gamma"].values()]
    assert len(tensors) == len(spg.mask.params) and state["early"] is None


@pytest.mark.parametrize("scale_head", [True, False])
def test_the_applied_gradient_is_one_minus_gamma_times_g(scale_head):
    bench = blobs(n_tasks=2)
    model = _model(bench)
    spg = _spg(model, scale_head=scale_head)
    _train(spg, bench[0])
    gamma = {n: g.clone() for n, g in spg.mask.gamma.items()}
    assert spg.mask.active and any(g.max() > 0.5 for g in gamma.values())
    task = bench[1]
    spg.before_task(task)
    lr = 0.1
    opt = torch.optim.SGD(spg.trainable_parameters(task), lr=lr)
    trainable = {id(p) for p in spg.trainable_parameters(task)}
    named = {n: p for n, p in model.named_parameters() if id(p) in trainable}
    assert set(named) == set(gamma) | {"heads.1.weight", "heads.1.bias"}
    for i, b in enumerate(spg.batches(task, 16, torch.Generator().manual_seed(0))):
        loss = spg.loss(b, task)
        opt.zero_grad()
        loss.backward()
        raw = {n: p.grad.clone() for n, p in named.items() if p.grad is not None}
        before = {n: p.detach().clone() for n, p in named.items()}
        spg.after_backward(b, task)
        head_scale = 1 - torch.cat([g.flatten() for g in gamma.values()]).mean()
        for n, g in raw.items():
            if n in gamma:  # backbone: elementwise (1 - gamma) g
                want = (1 - gamma[n]) * g
            else:  # the current head: the scalar 1 - mean(gamma), or untouched
                assert n.startswith("heads.1.")
                want = head_scale * g if scale_head else g
            assert torch.allclose(named[n].grad, want, rtol=1e-6, atol=1e-9), n
        opt.step()
        spg.after_step(b, task)
        for n in raw:  # plain SGD applies exactly the masked gradient
            want = before[n] - lr * named[n].grad
            assert torch.allclose(named[n].detach(), want, rtol=1e-6, atol=1e-8), n
        if i == 2:
            break
    # no forward mask: the loss is plain CE on the task's head
    b = next(spg.batches(task, 16, torch.Generator().manual_seed(1)))
    assert torch.equal(spg.loss(b, task), F.cross_entropy(model(b.x, task_id=1), b.y))


def test_first_task_gradients_are_untouched():
    bench = blobs(n_tasks=2)
    model = _model(bench)
    spg = _spg(model)
    spg.before_task(bench[0])
    b = next(spg.batches(bench[0], 16, torch.Generator().manual_seed(0)))
    spg.loss(b, bench[0]).backward()
    raw = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    spg.after_backward(b, bench[0])
    assert all(
        torch.equal(r, p.grad)
        for r, p in zip(raw, [p for p in model.parameters() if p.grad is not None], strict=True)
    )


def test_fully_blocked_parameters_do_not_move():
    bench = blobs(n_tasks=2)
    model = _model(bench)
    spg = _spg(model)
    spg.mask.consolidate(
        {n: (torch.rand_like(p) > 0.5).float() for n, p in spg.mask.params.items()}
    )
    before = {n: p.detach().clone() for n, p in spg.mask.params.items()}
    _train(spg, bench[1], finish=False)
    for n, p in spg.mask.params.items():
        blocked = spg.mask.gamma[n] == 1
        assert torch.equal(p.detach()[blocked], before[n][blocked])
        assert not torch.equal(p.detach()[~blocked], before[n][~blocked])


# ------------------------------------------------------------------ no side effects


def _images(n_tasks=2, n=24, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    splits = []
    for _ in range(n_tasks):
        x = torch.rand(n, 1, side, side, generator=g)
        y = torch.arange(n) % 2
        splits.append((x, y, x[:8], y[:8]))
    return Benchmark("images", make_tasks(splits), (1, side, side))


@pytest.mark.parametrize("eval_mode", [False, True])
def test_importance_pass_changes_no_parameter_grad_or_batchnorm_statistic(eval_mode):
    bench = _images()
    torch.manual_seed(0)
    backbone = AlexNet((1, 16, 16), nhid=32, drop1=0.2, drop2=0.5, batch_norm="affine")
    model = ContinualModel(backbone, bench.classes_per_task)
    spg = _spg(model, importance_eval_mode=eval_mode, importance_args={"batch_size": 8})
    _train(spg, bench[0], lr=0.05)
    assert backbone.bn1.num_batches_tracked > 0  # training did move the statistics
    _train(spg, bench[1], lr=0.05, finish=False)
    model.train()
    state = copy.deepcopy(model.state_dict())  # parameters and every BN buffer
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    spg.after_task(bench[1])  # the importance pass (with CHI on head 0)
    after = model.state_dict()
    assert state.keys() == after.keys()
    for k in state:
        assert torch.equal(state[k], after[k]), k
    for n, p in model.named_parameters():
        if n in grads:
            assert torch.equal(p.grad, grads[n]), n
    assert model.training  # mode restored
    assert spg.mask.gamma["backbone.bn1.weight"].shape == (64,)  # BN affine params masked too


def test_importance_runs_in_train_mode_by_default():
    bench = blobs(n_tasks=1)
    model = _model(bench, dropout=0.5)
    model.eval()
    params = dict(model.backbone.named_parameters())
    modes = []
    model.backbone.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    a, b = SPGImportance(), SPGImportance()
    a.setup(params)
    b.setup(params)
    ga, gb = a.compute(model, bench[0]), b.compute(model, bench[0])
    assert all(modes) and not model.training
    assert any(not torch.equal(ga[n], gb[n]) for n in params)  # dropout: stochastic
    modes.clear()
    c = SPGImportance(eval_mode=True)
    c.setup(params)
    gc, gd = c.compute(model, bench[0]), c.compute(model, bench[0])
    assert not any(modes)
    assert all(torch.equal(gc[n], gd[n]) for n in params)


def test_registry_and_errors():
    assert isinstance(make_importance("spg", chi=False), SPGImportance)
    assert isinstance(make_method("spg"), SPG)
    with pytest.raises(ValueError):
        make_method("spg", protect="heads")
    with pytest.raises(ValueError):
        make_method("spg", threshold=1.5)
    with pytest.raises(ValueError):
        make_method("spg", importance_epoch=0)
    with pytest.raises(ValueError, match="SPG's own estimator"):
        make_method("spg", importance="fisher", chi=False)
    with pytest.raises(ValueError, match="outside"):
        spg = _spg(_model(blobs()))
        spg.mask.consolidate({n: 2 * torch.ones_like(p) for n, p in spg.mask.params.items()})


def test_shared_head_is_masked_and_its_chi_term_taken_once():
    bench = blobs(n_tasks=3)
    model = _model(bench, head="shared")
    spg = _spg(model)
    assert "heads.0.weight" in spg.mask.params
    assert len(spg_losses(2, shared_head=True)) == 2
    for t in range(3):
        _train(spg, bench[t])
    assert spg.mask.gamma["heads.0.weight"].max() > 0
    assert spg._head_params == []  # nothing left for the scalar head scale
