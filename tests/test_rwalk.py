"""RWalk: EWC++'s online Fisher, the KL-normalised path score, and the penalty they weight."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retain.core.estimators import make_importance
from retain.core.importance import Importance, RiemannianWalk, min_max_normalize
from retain.engine import fit
from retain.methods import make_method
from retain.methods.ewc import EWC
from retain.models import ContinualModel
from tests.own_loop import train_task
from tests.synthetic import TinyBackbone, blobs

H = torch.tensor([2.0, 0.5])  # L = 1/2 sum_i h_i (theta_i - m_i)^2
M = torch.tensor([1.0, -1.0])


def _quadratic_steps(est: RiemannianWalk, steps: int, lr: float = 0.1, **sgd) -> nn.Parameter:
    theta = nn.Parameter(torch.zeros(2))
    est.setup({"theta": theta})
    est.before_task(None)
    opt = torch.optim.SGD([theta], lr=lr, **sgd)
    for _ in range(steps):
        loss = 0.5 * (H * (theta - M).square()).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        est.after_step()
    return theta


def test_path_score_equals_its_formula_on_a_two_parameter_quadratic():
    """Two SGD steps (lr 0.1) from theta = 0, worked out by hand:
    step 1: g = h (theta - m) = (-2, 0.5), theta = (0.2, -0.05), -g dtheta = (0.4, 0.025);
    step 2: g = (-1.6, 0.475), theta = (0.36, -0.0975), -g dtheta = (0.256, 0.0225625).
    F = 0.5 g2^2 + 0.5 g1^2 = (3.28, 0.2378125); s = dL / (1/2 F dtheta^2 + eps)."""
    d_loss = torch.tensor([0.4 + 0.256, 0.025 + 0.0225625])
    d_theta = torch.tensor([0.36, -0.0975])
    fisher = torch.tensor([0.5 * 2.56 + 0.5 * 4.0, 0.5 * 0.225625 + 0.5 * 0.25])
    want_s = d_loss / (0.5 * fisher * d_theta.square() + 0.1)
    # the interval closes after the second step, or (interval 5) at compute
    for interval in (2, 5):
        est = RiemannianWalk(alpha=0.5, eps=0.1, interval=interval, normalize=False)
        theta = _quadratic_steps(est, steps=2)
        assert torch.allclose(theta.detach(), d_theta)
        assert torch.allclose(est.fisher["theta"], fisher)
        out = est.compute(None, None)["theta"]
        assert torch.allclose(est.mean_score["theta"], want_s, rtol=1e-6)
        assert torch.allclose(out, fisher + want_s, rtol=1e-6)  # the first task's s as is
    # two intervals of one step each: the score is the sum of the per-interval ratios
    est = RiemannianWalk(alpha=0.5, eps=0.1, interval=1, normalize=False)
    _quadratic_steps(est, steps=2)
    est.compute(None, None)
    s1 = torch.tensor([0.4, 0.025]) / (0.5 * torch.tensor([4.0, 0.25]) * 0.04 + 0.1)
    s1[1] = 0.025 / (0.5 * 0.25 * 0.05**2 + 0.1)
    s2 = torch.tensor([0.256, 0.0225625]) / (
        0.5 * fisher * torch.tensor([0.16, -0.0475]).square() + 0.1
    )
    assert torch.allclose(est.mean_score["theta"], s1 + s2, rtol=1e-6)


def test_a_step_that_raises_the_loss_scores_zero():
    est = RiemannianWalk(interval=1, normalize=False)
    _quadratic_steps(est, steps=3, maximize=True)  # gradient ascent: dL = -g dtheta < 0
    assert est.omega["theta"].abs().sum() == 0  # reset at every interval
    out = est.compute(None, None)["theta"]
    assert torch.equal(est.mean_score["theta"], torch.zeros(2))  # clamped at 0
    assert torch.equal(out, est.fisher["theta"])


def test_fisher_is_the_moving_average_of_the_squared_task_gradient():
    """F <- alpha g^2 + (1 - alpha) F at every step (g^2 at the first), g the gradient of the
    task loss alone: the consumer's penalty gradient is taken out."""
    alpha = 0.3
    theta = nn.Parameter(torch.zeros(2))
    est = RiemannianWalk(alpha=alpha)
    est.setup({"theta": theta}, regularizer_grad=lambda n, v: 4 * (v - 1))
    est.before_task(None)
    opt = torch.optim.SGD([theta], lr=0.05)
    old = None
    for _ in range(4):
        task_loss = 0.5 * (H * (theta - M).square()).sum()
        loss = task_loss + 2 * (theta - 1).square().sum()  # gradient 4 (theta - 1)
        opt.zero_grad()
        loss.backward()
        g_task = H * (theta.detach() - M)
        opt.step()
        est.after_step()
        new = g_task.square()
        want = new if old is None else alpha * new + (1 - alpha) * old
        assert torch.allclose(est.fisher["theta"], want, rtol=1e-6)
        old = want
    # the Fisher runs on across tasks: before_task does not restart it
    kept = est.fisher["theta"].clone()
    est.before_task(None)
    assert torch.equal(est.fisher["theta"], kept)


def test_scores_are_averaged_over_tasks():
    est = RiemannianWalk(interval=1, normalize=False)
    theta = _quadratic_steps(est, steps=2)
    first = est.compute(None, None)["theta"] - est.fisher["theta"]
    est.before_task(None)
    opt = torch.optim.SGD([theta], lr=0.1)
    for _ in range(2):
        loss = 0.5 * (H * (theta + M).square()).sum()  # another task: move towards -m
        opt.zero_grad()
        loss.backward()
        opt.step()
        est.after_step()
    new = est.task_score["theta"].clone()
    assert new.abs().sum() > 0
    est.compute(None, None)
    assert torch.allclose(est.mean_score["theta"], (first + new) / 2)


def test_the_running_state_round_trips_mid_interval():
    """Killed after 3 steps of an interval of 5 and resumed: the same importance."""
    est = RiemannianWalk(interval=5)
    theta = _quadratic_steps(est, steps=3)
    state = {k: v for k, v in est.state_dict().items()}
    copy = RiemannianWalk(interval=5)
    copy.setup({"theta": theta})
    copy.load_state_dict({k: v for k, v in state.items()})
    assert copy.steps == 3
    outs = []
    for e in (est, copy):
        opt = torch.optim.SGD([theta], lr=0.1)
        before = theta.detach().clone()
        for _ in range(4):
            loss = 0.5 * (H * (theta - M).square()).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            e.after_step()
        outs.append(e.compute(None, None)["theta"])
        with torch.no_grad():
            theta.copy_(before)
    assert torch.equal(outs[0], outs[1])


def _model(bench, seed=0):
    torch.manual_seed(seed)
    return ContinualModel(TinyBackbone(), bench.classes_per_task, head="task")


def test_penalty_is_lambda_sum_fisher_plus_score_distance_on_a_made_up_state():
    bench = blobs()
    model = _model(bench)
    rw = make_method("rwalk", lamb=3.0, normalize=False)
    rw.setup(model, None)
    rw.before_task(bench[0])
    est = rw.estimator
    gen = torch.Generator().manual_seed(1)
    params = rw.penalty.params
    fisher = {n: torch.rand(p.shape, generator=gen) for n, p in params.items()}
    old_s = {n: torch.rand(p.shape, generator=gen) for n, p in params.items()}
    task_s = {n: torch.rand(p.shape, generator=gen) for n, p in params.items()}
    est.fisher = {n: t.clone() for n, t in fisher.items()}
    est.mean_score = {n: t.clone() for n, t in old_s.items()}
    est.task_score = {n: t.clone() for n, t in task_s.items()}
    rw.after_task(bench[0])
    anchor = {n: p.detach().clone() for n, p in params.items()}
    assert rw.regularizer().item() == 0.0  # at the anchor
    with torch.no_grad():
        for p in params.values():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    want = sum(
        3.0 * ((fisher[n] + (old_s[n] + task_s[n]) / 2) * (p - anchor[n]).square()).sum()
        for n, p in params.items()
    )
    assert want.item() > 0
    assert torch.allclose(rw.regularizer(), want, rtol=1e-5)
    # the task loss plus that penalty
    rw.before_task(bench[1])
    b = next(rw.batches(bench[1], 16, torch.Generator().manual_seed(0)))
    ce = make_method("finetune")
    ce.setup(model, None)
    ce.before_task(bench[1])
    assert torch.allclose(rw.loss(b, bench[1]), ce.loss(b, bench[1]) + want, rtol=1e-5)


def test_normalised_importance_is_the_min_max_of_fisher_and_score_and_weights_the_penalty():
    """The default (the authors' code): F and s each mapped to [0, 1] by (x - min)/(max - min)
    over all penalised parameters together, then added; the penalty is lambda sum w d^2."""
    bench = blobs()
    model = _model(bench)
    rw = make_method("rwalk", lamb=3.0)
    assert rw.normalize and rw.estimator.normalize
    rw.setup(model, None)
    rw.before_task(bench[0])
    est = rw.estimator
    gen = torch.Generator().manual_seed(2)
    params = rw.penalty.params
    # raw values on very different scales, offset so that the minimum is not 0
    fisher = {n: 1e-4 * torch.rand(p.shape, generator=gen) + 1e-5 for n, p in params.items()}
    score = {n: 5.0 * torch.rand(p.shape, generator=gen) + 0.5 for n, p in params.items()}
    est.fisher = {n: t.clone() for n, t in fisher.items()}
    est.task_score = {n: t.clone() for n, t in score.items()}  # first task: s as is
    rw.after_task(bench[0])
    f_all = torch.cat([t.flatten() for t in fisher.values()])
    s_all = torch.cat([t.flatten() for t in score.values()])
    f_lo, f_hi, s_lo, s_hi = f_all.min(), f_all.max(), s_all.min(), s_all.max()
    weight = rw.penalty.weight
    for n in params:
        want = (fisher[n] - f_lo) / (f_hi - f_lo) + (score[n] - s_lo) / (s_hi - s_lo)
        assert torch.allclose(weight[n], want, rtol=1e-5, atol=1e-6)
    w_all = torch.cat([weight[n].flatten() for n in params])
    assert w_all.min() >= 0 and w_all.max() <= 2
    # each part reaches 0 and 1 exactly once over all layers (global, not per layer)
    f_norm = torch.cat([((fisher[n] - f_lo) / (f_hi - f_lo)).flatten() for n in params])
    assert f_norm.min().item() == 0.0 and abs(f_norm.max().item() - 1.0) < 1e-6
    # the raw running values are kept for the next task
    assert all(torch.equal(est.fisher[n], fisher[n]) for n in params)
    assert all(torch.equal(est.mean_score[n], score[n]) for n in params)
    anchor = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for p in params.values():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    want = sum(3.0 * (weight[n] * (p - anchor[n]).square()).sum() for n, p in params.items())
    assert torch.allclose(rw.regularizer(), want, rtol=1e-5)
    raw = sum(
        3.0 * ((fisher[n] + score[n]) * (p - anchor[n]).square()).sum() for n, p in params.items()
    )
    assert not torch.allclose(rw.regularizer(), raw, rtol=1e-2)


def test_min_max_normalize_is_global_and_constant_input_gives_zeros():
    a, b = torch.tensor([1.0, 3.0]), torch.tensor([5.0])
    out = min_max_normalize({"a": a, "b": b})
    assert torch.allclose(out["a"], torch.tensor([0.0, 0.5])) and torch.allclose(
        out["b"], torch.ones(1)
    )
    zero = min_max_normalize({"a": torch.zeros(3)})
    assert torch.equal(zero["a"], torch.zeros(3))


class _Given(Importance):
    """Returns the importance it is handed: the Fisher of another run."""

    def __init__(self) -> None:
        self.value: dict[str, torch.Tensor] = {}

    def compute(self, model, task, heads="task"):
        return self.value


def test_without_the_score_it_is_online_ewc_on_the_same_fisher():
    """rwalk(score=False) = EWC (lambda/2 scale, so 2 lambda) in online mode taking the running
    Fisher as its importance, task after task; with the score it is not."""
    bench = blobs()
    for score in (False, True):
        model = _model(bench)
        rw = make_method("rwalk", lamb=2.0, score=score, interval=3, normalize=False)
        rw.setup(model, None)
        given = _Given()
        ewc = EWC(lamb=4.0, importance=given, online=True, alpha=0.0)
        ewc.setup(model, None)
        for task in (bench[0], bench[1]):
            train_task(rw, task, lr=0.1)  # ends with rw.after_task
            given.value = {n: f.clone() for n, f in rw.estimator.fisher.items()}
            ewc.before_task(task)
            ewc.after_task(task)
            with torch.no_grad():
                for p in model.backbone.parameters():
                    p.add_(0.03)
            same = torch.allclose(rw.regularizer(), ewc.regularizer(), rtol=1e-6)
            assert same is (not score)
            model.zero_grad()  # the last training step's gradients
            rw.regularizer().backward()
            g_rw = [p.grad.clone() for p in model.backbone.parameters()]
            model.zero_grad()
            ewc.regularizer().backward()
            g_ewc = [p.grad.clone() for p in model.backbone.parameters()]
            model.zero_grad()
            if not score:
                assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-9) for a, b in zip(g_rw, g_ewc))


@pytest.mark.parametrize("loss_heads", ["task", "seen"])
def test_fit_task_aware_and_agnostic(loss_heads):
    bench = blobs()
    model = _model(bench)
    rw = make_method("rwalk", lamb=1.0, loss_heads=loss_heads)
    result = fit(model, bench, rw, epochs=1, batch_size=16, lr=0.1, seed=0)
    heads_penalised = any(n.startswith("heads") for n in rw.penalty.weight)
    assert heads_penalised is (loss_heads == "seen")
    assert rw.estimator.n_tasks == len(bench)
    assert result is not None


def test_registered_estimator_and_errors():
    assert isinstance(make_importance("rwalk", interval=4), RiemannianWalk)
    for kwargs, word in (
        ({"alpha": 1.5}, "alpha"),
        ({"eps": 0.0}, "eps"),
        ({"interval": 0}, "interval"),
        ({"lamb": -1.0}, "lamb"),
    ):
        with pytest.raises(ValueError, match=word):
            make_method("rwalk", **kwargs)
