"""GEM: the dual QP solver against brute force and KKT, the projection against the primal,
the per-task memory, the margin and the hook, through one's own loop and fit()."""

from __future__ import annotations

import itertools

import pytest
import torch

from retain.engine import fit
from retain.methods import BenchmarkInfo, make_method
from retain.methods.gem import nonnegative_qp, project_gradient, solve_dual
from retain.models import ContinualModel
from tests.own_loop import train_task
from tests.synthetic import TinyBackbone, blobs

D = torch.float64


def _info(bench):
    return BenchmarkInfo(bench.n_tasks, bench.classes_per_task, tuple(bench.input_shape))


def _random_problem(gen: torch.Generator, t: int, p: int, dependent: bool = False):
    """Memory gradients ``G`` (``t x p``) and a gradient ``g``; ``dependent``: a repeated row
    and a combination of rows (a singular ``G G^T``)."""
    G = torch.randn(t, p, generator=gen, dtype=D)
    if dependent and t >= 3:
        G[1] = G[0]
        G[2] = 0.5 * G[0] - 2.0 * G[-1]
    g = torch.randn(p, generator=gen, dtype=D)
    return G, g


def _objective(P, c, u):
    return float(0.5 * u @ P @ u + c @ u)


def _brute_force_nnqp(P, c):
    """``min_{u >= 0} 1/2 u^T P u + c^T u`` by trying every set of free variables."""
    t = len(c)
    best, best_u = float("inf"), None
    for k in range(t + 1):
        for free in itertools.combinations(range(t), k):
            u = torch.zeros(t, dtype=D)
            if free:
                idx = torch.tensor(free)
                u[idx] = torch.linalg.lstsq(P[idx][:, idx], -c[idx].unsqueeze(1)).solution[:, 0]
            if (u >= -1e-12).all() and _objective(P, c, u) < best:
                best, best_u = _objective(P, c, u), u.clamp_min(0)
    return best_u


def _brute_force_primal(g, G):
    """The closest ``z`` to ``g`` with ``G z >= 0`` (Eq. 11), by trying every set of
    constraints held with equality: ``z = g - G_S^T (G_S G_S^T)^+ G_S g``."""
    t = len(G)
    best, best_z = float("inf"), None
    for k in range(t + 1):
        for active in itertools.combinations(range(t), k):
            z = g.clone()
            if active:
                A = G[list(active)]
                z = g - A.T @ (torch.linalg.pinv(A @ A.T) @ (A @ g))
            feasible = (G @ z >= -1e-10 * g.norm() * G.norm(dim=1)).all()
            if feasible and float((z - g).norm()) < best:
                best, best_z = float((z - g).norm()), z
    return best_z


# ---------------------------------------------------------------------------- the solver
@pytest.mark.parametrize("dependent", [False, True])
def test_nonnegative_qp_satisfies_kkt_and_matches_brute_force(dependent):
    gen = torch.Generator().manual_seed(1)
    for trial in range(60):
        t = 1 + trial % 6
        G, g = _random_problem(gen, t, p=3 + trial % 9, dependent=dependent)
        P, c = G @ G.T, G @ g
        u = nonnegative_qp(P, c)
        scale = float(P.diagonal().max() + c.abs().max())
        grad = P @ u + c
        assert (u >= 0).all()  # primal feasibility
        assert (grad >= -1e-9 * scale).all()  # dual feasibility
        assert (u * grad).abs().max() <= 1e-9 * scale * (1 + float(u.abs().max()))
        ref = _brute_force_nnqp(P, c)
        assert _objective(P, c, u) == pytest.approx(_objective(P, c, ref), rel=1e-9, abs=1e-12)
        # the primal point G^T u is unique even where u is not (dependent rows)
        assert torch.allclose(G.T @ u, G.T @ ref, rtol=1e-8, atol=1e-9 * scale)


def test_nonnegative_qp_degenerate_cases():
    assert torch.equal(nonnegative_qp(torch.zeros(0, 0), torch.zeros(0)), torch.zeros(0, dtype=D))
    # a non-negative linear term: 0 is optimal; a zero matrix with a zero term: 0 too
    assert torch.equal(nonnegative_qp(torch.eye(3), torch.ones(3)), torch.zeros(3, dtype=D))
    assert torch.equal(nonnegative_qp(torch.zeros(2, 2), torch.zeros(2)), torch.zeros(2, dtype=D))
    # one variable: u = max(0, -c / P)
    assert float(nonnegative_qp(torch.tensor([[4.0]]), torch.tensor([-2.0]))[0]) == 0.5


# ---------------------------------------------------------------------------- the projection
def test_projection_satisfies_every_constraint_and_is_the_closest_such_gradient():
    gen = torch.Generator().manual_seed(2)
    projected = 0
    for trial in range(80):
        t = 1 + trial % 5
        G, g = _random_problem(gen, t, p=2 + trial % 7, dependent=trial % 4 == 0)
        new = project_gradient(g, G, margin=0.0)
        tol = 1e-9 * float(g.norm() * G.norm(dim=1).max())
        assert (G @ new >= -tol).all()  # Eq. 7 holds after the projection
        if new is g:
            assert (G @ g >= 0).all()
            continue
        projected += 1
        closest = _brute_force_primal(g, G)
        assert torch.allclose(new, closest, rtol=1e-9, atol=1e-9 * float(g.norm()))
    assert projected > 30


def test_no_violation_leaves_the_gradient_bit_for_bit():
    gen = torch.Generator().manual_seed(3)
    kept = 0
    for _ in range(100):
        G = torch.randn(3, 20, generator=gen)
        g = torch.randn(20, generator=gen)
        if (G @ g >= 0).all():
            kept += 1
            assert project_gradient(g, G, margin=0.5) is g
    assert kept > 5
    g = torch.randn(7, generator=gen)
    G = torch.stack([g, 2 * g, torch.zeros(7)])  # aligned or zero: no constraint violated
    assert project_gradient(g, G, margin=0.5) is g


def test_margin_moves_the_solution_as_the_formula_says():
    # orthogonal memory gradients decouple the dual: v_k = max(margin, -<g, g_k> / |g_k|^2)
    G = torch.zeros(3, 5, dtype=D)
    G[0, 0], G[1, 1], G[2, 2] = 2.0, 0.5, 3.0
    g = torch.tensor([-1.0, 0.3, -6.0, 1.0, 2.0], dtype=D)
    for margin in (0.0, 0.1, 0.5, 2.0):
        v = torch.clamp(-(G @ g) / (G * G).sum(1), min=margin)
        assert torch.allclose(solve_dual(G @ G.T, G @ g, margin), v, rtol=1e-12)
        new = project_gradient(g, G, margin)
        assert torch.allclose(new, g + G.T @ v, rtol=1e-12)
        # a violated constraint ends at <g~, g_k> = margin |g_k|^2 when the margin binds
        assert float(new @ G[1]) == pytest.approx(float(g @ G[1] + margin * G[1] @ G[1]))
    # general G: v >= margin everywhere, and the margin's solution is the shifted problem's
    gen = torch.Generator().manual_seed(4)
    G, g = _random_problem(gen, 4, 9)
    g = g - 3 * G[0]
    for margin in (0.0, 0.5):
        v = solve_dual(G @ G.T, G @ g, margin)
        assert (v >= margin - 1e-15).all()
        u = _brute_force_nnqp(G @ G.T, G @ g + margin * (G @ G.T).sum(1))
        assert torch.allclose(v, margin + u, rtol=1e-9, atol=1e-12)
        assert torch.allclose(project_gradient(g, G, margin), G.T @ v + g, rtol=1e-12)


# ---------------------------------------------------------------------------- the method
def _model(bench, head="task", seed=0):
    torch.manual_seed(seed)
    return ContinualModel(TinyBackbone(), bench.classes_per_task, head=head)


def _rows_of(x, pool):
    """Whether every row of ``x`` is a row of ``pool``."""
    return bool((x[:, None, :] == pool[None]).all(dim=2).any(dim=1).all())


@pytest.mark.parametrize("per_task", [True, False])
def test_memory_holds_the_right_samples_per_task(per_task):
    bench = blobs(n_tasks=3, per_class=40)
    m = make_method("gem", memory_size=30, per_task=per_task)
    m.setup(_model(bench), _info(bench))
    for task in bench:
        m.before_task(task)
        m.after_task(task)
        data = m.memory.get_all()
        n = 30 if per_task else 30 // (task.id + 1)
        assert m.memory_tasks() == list(range(task.id + 1))
        for k in range(task.id + 1):
            pick = data["task_ids"] == k
            assert int(pick.sum()) == n
            assert len(set(data["rank"][pick].tolist())) == n  # distinct samples
            assert _rows_of(data["x"][pick], bench[k].x_train)
            # each sample keeps its own label
            for x, y in zip(data["x"][pick], data["y"][pick]):
                i = int((bench[k].x_train == x).all(dim=1).nonzero()[0, 0])
                assert int(bench[k].y_train[i]) == int(y)


@pytest.mark.parametrize(
    ("loss_heads", "head"), [("seen", "task"), ("task", "task"), ("seen", "shared")]
)
def test_hook_projects_against_every_past_task_memory(loss_heads, head):
    bench = blobs(n_tasks=3, per_class=40)
    m = make_method("gem", memory_size=20, margin=0.0, loss_heads=loss_heads)
    m.setup(_model(bench, head), _info(bench))
    for task in list(bench)[:2]:
        m.before_task(task)
        train_task(m, task, torch.Generator().manual_seed(0), epochs=3, lr=0.1, batch_size=16)
        m.after_task(task)
    t2 = bench[2]
    m.before_task(t2)
    params = m._parameters()
    cases = {"projected": 0, "kept": 0}
    for seed in range(8):
        for p in params:
            p.grad = None
        batch = next(m.batches(t2, 16, torch.Generator().manual_seed(seed)))
        m.loss(batch, t2).backward()
        g = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        )
        G = torch.stack(
            [
                torch.cat(
                    [
                        (r if r is not None else torch.zeros_like(p)).reshape(-1)
                        for r, p in zip(rows, params)
                    ]
                )
                for rows in m.memory_gradients(params, t2)
            ]
        )
        assert len(G) == 2
        before = m.projected
        m.after_backward(batch, t2)
        new = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        )
        if (G @ g < 0).any():
            cases["projected"] += 1
            assert m.projected == before + 1
            assert (G @ new >= -1e-5 * g.norm() * G.norm(dim=1)).all()
            assert torch.allclose(
                new.double(), _brute_force_primal(g.double(), G.double()), atol=1e-5
            )
        else:
            cases["kept"] += 1
            assert m.projected == before
            assert torch.equal(new, g)
    assert cases["projected"] > 0, cases


def test_fit_runs_and_checkpoints_its_memory_and_counters():
    bench = blobs(n_tasks=3, per_class=30)
    m = make_method("gem", memory_size=16)
    r = fit(_model(bench), bench, m, epochs=1, lr=0.05, batch_size=16, seed=0)
    assert r.task_aware.trained == 3
    assert 0.0 <= r.method_metrics["projected_fraction"] <= 1.0
    state = m.state_dict()
    other = make_method("gem", memory_size=16)
    other.load_state_dict(state)
    assert torch.equal(other.memory.get_all()["x"], m.memory.get_all()["x"])
    assert (other.steps, other.projected) == (m.steps, m.projected)


@pytest.mark.parametrize(
    "args", [{"margin": -0.1}, {"margin": float("nan")}, {"memory_size": 0}, {"loss_heads": "all"}]
)
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError):
        make_method("gem", **args)
