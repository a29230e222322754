"""Importance estimators against hand computations on tiny models."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retain.core.estimators import ESTIMATORS, make_importance
from retain.core.importance import (
    FisherImportance,
    MASImportance,
    PathIntegral,
    fisher_diagonal,
    mas_importance,
    protected_parameters,
)
from retain.core.spg_importance import SPGImportance
from retain.models import ContinualModel
from tests.synthetic import TinyBackbone, blobs


def _linear(seed=0, d_in=3, d_out=4):
    torch.manual_seed(seed)
    lin = nn.Linear(d_in, d_out)
    x = torch.randn(10, d_in)
    y = torch.randint(0, d_out, (10,))
    return lin, x, y


def _ce_grads(lin, x, labels):
    """Per-sample gradients of CE for a linear softmax model, by hand:
    dW = (p - e_y) x^T, db = p - e_y."""
    p = F.softmax(lin(x), 1).detach()
    r = p - F.one_hot(labels, p.shape[1]).float()
    return r[:, :, None] * x[:, None, :], r


def _batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


@pytest.mark.parametrize("labels", ["true", "max_pred"])
def test_fisher_per_sample_matches_hand_computation(labels):
    lin, x, y = _linear()
    target = y if labels == "true" else lin(x).argmax(1)
    gw, gb = _ce_grads(lin, x, target)
    f = fisher_diagonal(lin, _batches(x, y, 4), labels=labels, granularity="sample")
    assert torch.allclose(f["weight"], gw.square().mean(0), atol=1e-6)
    assert torch.allclose(f["bias"], gb.square().mean(0), atol=1e-6)


@pytest.mark.parametrize("size", [1, 3, 4, 10])
def test_fisher_batch_granularity_is_size_weighted_squared_batch_gradient(size):
    lin, x, y = _linear()
    gw, gb = _ce_grads(lin, x, y)
    want_w = sum(len(b) * gw[i : i + size].mean(0).square() for i, b in _starts(x, size)) / 10
    want_b = sum(len(b) * gb[i : i + size].mean(0).square() for i, b in _starts(x, size)) / 10
    f = fisher_diagonal(lin, _batches(x, y, size), labels="true", granularity="batch")
    assert torch.allclose(f["weight"], want_w, atol=1e-6)
    assert torch.allclose(f["bias"], want_b, atol=1e-6)
    if size == 1:  # one sample per batch: exactly the per-sample Fisher
        assert torch.allclose(f["weight"], gw.square().mean(0), atol=1e-6)


def _starts(x, size):
    return [(i, x[i : i + size]) for i in range(0, len(x), size)]


def test_fisher_sampled_labels_approach_the_true_fisher():
    """labels="sample" draws y ~ p(y|x): its mean over many draws is the true Fisher
    sum_c p_c g_c^2."""
    lin, x, _ = _linear(d_out=3)
    x1 = x[:1].repeat(4000, 1)
    p = F.softmax(lin(x[:1]), 1).detach()[0]
    true_b = sum(p[c] * (p - F.one_hot(torch.tensor(c), 3).float()).square() for c in range(3))
    f = fisher_diagonal(
        lin,
        _batches(x1, torch.zeros(4000, dtype=torch.long), 500),
        labels="sample",
        granularity="sample",
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(f["bias"], true_b, rtol=0.08)


def test_mas_matches_hand_computation():
    """For f = Wx + b: d||f||^2/dW = 2 f x^T, d||f||^2/db = 2 f."""
    lin, x, y = _linear()
    f_out = lin(x).detach()
    gw, gb = 2 * f_out[:, :, None] * x[:, None, :], 2 * f_out
    per_sample = mas_importance(lin, _batches(x, y, 4), granularity="sample")
    assert torch.allclose(per_sample["weight"], gw.abs().mean(0), atol=1e-5)
    assert torch.allclose(per_sample["bias"], gb.abs().mean(0), atol=1e-5)
    # batch (default): (1/N) sum_b |sum_{k in b} g_k| (the official code's running mean)
    batch = mas_importance(lin, _batches(x, y, 4))
    want = sum(gw[i : i + 4].sum(0).abs() for i in range(0, 10, 4)) / 10
    assert torch.allclose(batch["weight"], want, atol=1e-5)
    # the plain norm (FACIL): d||f||/dW = f x^T / ||f||
    plain = mas_importance(lin, _batches(x, y, 4), granularity="sample", squared=False)
    g = (f_out / f_out.norm(dim=1, keepdim=True))[:, :, None] * x[:, None, :]
    assert torch.allclose(plain["weight"], g.abs().mean(0), atol=1e-5)


def test_mas_needs_no_labels():
    lin, x, _ = _linear()
    a = mas_importance(lin, [(x,)])
    b = mas_importance(lin, [(x, torch.zeros(10, dtype=torch.long))])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_estimators_on_a_continual_model_use_the_task_head_and_leave_no_trace():
    bench = blobs()
    torch.manual_seed(0)
    model = ContinualModel(TinyBackbone(dropout=0.5), bench.classes_per_task)
    model.train()
    params = dict(model.named_parameters())
    ests = [FisherImportance(), MASImportance(), FisherImportance(heads="seen")]
    ests += [FisherImportance(granularity="sample"), MASImportance(granularity="sample")]
    for est in ests:
        est.setup(params)
        imp = est.compute(model, bench[1])
        assert set(imp) == set(params)
        assert all(imp[n].shape == p.shape for n, p in params.items())
        assert imp["backbone.net.0.weight"].abs().sum() > 0
        assert not any(t.requires_grad for t in imp.values())  # no graph kept alive
        assert imp["heads.1.weight"].abs().sum() > 0  # task 1's head
        assert imp["heads.2.weight"].abs().sum() == 0  # a future head plays no part
        if est.heads != "seen":
            assert imp["heads.0.weight"].abs().sum() == 0
        assert model.training  # mode restored
        assert all(p.grad is None for p in model.parameters())  # .grad untouched
    # deterministic despite dropout: computed in eval mode
    est = MASImportance()
    est.setup(params)
    a, b = est.compute(model, bench[0]), est.compute(model, bench[0])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_path_integral_equals_sum_of_minus_g_dtheta_for_sgd_on_a_quadratic():
    """L = 1/2 sum_i h_i (theta_i - m_i)^2 trained with plain SGD: omega_i = sum_t -g_i dtheta_i,
    and for a small step it tends to the loss decrease due to theta_i."""
    torch.manual_seed(0)
    h = torch.tensor([4.0, 1.0, 0.25, 0.0])
    m = torch.tensor([1.0, -2.0, 0.5, 3.0])
    theta = nn.Parameter(torch.zeros(4))
    est = PathIntegral(xi=0.1)
    est.setup({"theta": theta})
    est.before_task(None)
    opt = torch.optim.SGD([theta], lr=0.01)
    by_hand = torch.zeros(4)
    for _ in range(300):
        loss = 0.5 * (h * (theta - m).square()).sum()
        opt.zero_grad()
        loss.backward()
        before, g = theta.detach().clone(), theta.grad.clone()
        opt.step()
        est.after_step()
        by_hand -= g * (theta.detach() - before)
    assert torch.allclose(est.omega["theta"], by_hand, rtol=1e-5, atol=1e-7)
    decrease = 0.5 * h * ((0 - m).square() - (theta.detach() - m).square())
    assert torch.allclose(by_hand, decrease, rtol=0.05, atol=1e-4)
    delta = theta.detach()
    omega = est.compute(None, None)["theta"]
    assert torch.allclose(omega, by_hand / (delta.square() + 0.1))
    assert omega[3] == 0  # a parameter that never moved has no importance
    assert est.omega["theta"].abs().sum() == 0  # reset for the next task


def test_path_integral_subtracts_the_regulariser_gradient():
    theta = nn.Parameter(torch.zeros(2))
    est = PathIntegral()
    est.setup({"theta": theta}, regularizer_grad=lambda n, v: 10 * (v - 1))
    est.before_task(None)
    opt = torch.optim.SGD([theta], lr=0.1)
    by_hand = torch.zeros(2)
    for _ in range(5):
        task_loss = (theta - torch.tensor([2.0, -1.0])).square().sum()
        loss = task_loss + 5 * (theta - 1).square().sum()
        opt.zero_grad()
        loss.backward()
        before = theta.detach().clone()
        g_task = 2 * (before - torch.tensor([2.0, -1.0]))
        opt.step()
        est.after_step()
        by_hand -= g_task * (theta.detach() - before)
    assert torch.allclose(est.omega["theta"], by_hand, atol=1e-6)


def test_registry_and_errors():
    assert {"fisher", "mas", "si", "spg"} <= set(ESTIMATORS)
    assert isinstance(make_importance("spg"), SPGImportance)  # registered in one place
    assert isinstance(make_importance("mas", granularity="batch"), MASImportance)
    est = PathIntegral()
    assert make_importance(est) is est
    with pytest.raises(ValueError, match="unknown importance"):
        make_importance("nope")
    with pytest.raises(ValueError, match="labels"):
        FisherImportance(labels="argmax")


@pytest.mark.parametrize("estimator", [FisherImportance, MASImportance])
def test_per_sample_estimate_of_some_parameters_keeps_no_graph(estimator):
    """Parameters left out (here the heads) must not make the result part of an autograd
    graph: that kept every chunk's per-sample gradients in memory (22 GB on Fashion-MNIST)."""
    bench = blobs()
    torch.manual_seed(0)
    model = ContinualModel(TinyBackbone(), bench.classes_per_task)
    est = estimator(granularity="sample")
    est.setup({"backbone." + n: p for n, p in model.backbone.named_parameters()})
    imp = est.compute(model, bench[0])
    assert not any(t.requires_grad or t.grad_fn is not None for t in imp.values())
    est.setup(dict(model.backbone.named_parameters()))  # names relative to the wrong module
    with pytest.raises(ValueError, match="named_parameters"):
        est.compute(model, bench[0])


@pytest.mark.parametrize(
    ("head", "which", "loss_heads", "with_heads"),
    [
        ("task", "auto", "task", False),  # per-task heads: trained only with their task
        ("task", "auto", "seen", True),  # later tasks train the old heads too
        ("shared", "auto", "task", True),
        ("task", "backbone", "seen", False),
        ("task", "all", "task", True),
    ],
)
def test_protected_parameters(head, which, loss_heads, with_heads):
    bench = blobs()
    model = ContinualModel(TinyBackbone(), bench.classes_per_task, head=head)
    next(model.backbone.parameters()).requires_grad_(False)  # not trainable: not protected
    got = protected_parameters(model, which, loss_heads)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    want = {n for n in trainable if with_heads or n.startswith("backbone.")}
    assert set(got) == want and all(got[n] is trainable[n] for n in got)
    with pytest.raises(ValueError, match="protect must be one of"):
        protected_parameters(model, "heads")
