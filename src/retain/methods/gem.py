"""Gradient Episodic Memory: keep every past task's memory loss from rising, by a small QP."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from retain.core.buffers import ExemplarMemory
from retain.data.benchmark import Task
from retain.methods.agem import _flat
from retain.methods.base import Batch, Method, register


def nonnegative_qp(P: Tensor, c: Tensor, max_iter: int | None = None) -> Tensor:
    """``argmin_{u >= 0} 1/2 u^T P u + c^T u`` for a symmetric positive semi-definite ``P``
    (``t x t``), by the Lawson-Hanson active-set method written on the Gram matrix.

    The problem is the non-negative least squares ``min_{u >= 0} |A u + b|^2`` with
    ``A^T A = P`` and ``A^T b = c``; Lawson-Hanson ends after finitely many steps at the exact
    solution (to rounding) and keeps the free variables' columns of ``A`` linearly
    independent, so a singular ``P`` (dependent memory gradients) is handled too. Each step
    solves one ``|free| x |free|`` linear system: trivial for GEM's at most tens of tasks.
    Computed in float64 on the CPU (the inputs are converted); returns a float64 CPU vector.

    Args:
        P: the quadratic term, ``t x t``, symmetric positive semi-definite.
        c: the linear term, ``t``.
        max_iter: cap on the active-set steps (default ``10 t + 10``; never reached in
            exact arithmetic, it guards against cycling on rounding).
    """
    P = P.detach().to("cpu", torch.float64)
    c = c.detach().to("cpu", torch.float64).reshape(-1)
    t = len(c)
    u = torch.zeros(t, dtype=torch.float64)
    free = torch.zeros(t, dtype=torch.bool)
    scale = max(float(P.diagonal().abs().max()) if t else 0.0, float(c.abs().max()) if t else 0.0)
    tol = 1e-13 * max(t, 1) * max(scale, 1e-300)  # a gradient entry below this counts as 0
    w = -c  # the negative gradient at u
    steps = 10 * t + 10 if max_iter is None else max_iter
    while steps > 0:
        candidates = ~free & (w > tol)
        if not bool(candidates.any()):
            break  # KKT: every bound variable has a non-negative gradient
        free[int(torch.argmax(torch.where(candidates, w, -torch.inf)))] = True
        while steps > 0:
            steps -= 1
            s = _free_solution(P, c, free)
            if bool((s[free] > 0).all()):
                break
            down = free & (s <= 0)  # step from u towards s until the first one reaches 0
            gap = u[down] - s[down]  # >= 0; 0 only where u = s = 0 (then no step)
            ratios = torch.where(gap > 0, u[down] / gap.clamp_min(1e-300), torch.zeros_like(gap))
            alpha = float(ratios.min())
            u = u + alpha * (s - u)
            hit = torch.nonzero(down).squeeze(1)[int(torch.argmin(ratios))]
            u[hit] = 0.0
            free &= u > 0
            u = torch.where(free, u, torch.zeros_like(u))
        else:
            break
        u = s
        w = -(P @ u + c)
    return u


def _free_solution(P: Tensor, c: Tensor, free: Tensor) -> Tensor:
    """The unconstrained minimiser over the free variables (the others held at 0)."""
    s = torch.zeros_like(c)
    idx = torch.nonzero(free).squeeze(1)
    sub = P[idx][:, idx]
    sol = torch.linalg.lstsq(sub, -c[idx].unsqueeze(1), driver="gelsd").solution
    s[idx] = sol.squeeze(1)
    return s


def solve_dual(GGt: Tensor, Gg: Tensor, margin: float = 0.0) -> Tensor:
    """GEM's dual (Eq. 12, with the official code's margin as a lower bound on ``v``):
    ``argmin_{v >= margin} 1/2 v^T G G^T v + g^T G^T v``, given ``G G^T`` and ``G g``.

    With ``v = margin + u``: ``min_{u >= 0} 1/2 u^T (G G^T) u + (G g + margin G G^T 1)^T u``,
    solved by :func:`nonnegative_qp`. Returns a float64 CPU vector."""
    GGt = GGt.detach().to("cpu", torch.float64)
    Gg = Gg.detach().to("cpu", torch.float64).reshape(-1)
    c = Gg + margin * GGt.sum(dim=1)
    return margin + nonnegative_qp(GGt, c)


def project_gradient(g: Tensor, G: Tensor, margin: float = 0.0) -> Tensor:
    """GEM's projection of the gradient ``g`` (``p``) against the past tasks' gradients ``G``
    (``t x p``, one row per task).

    ``g`` itself (the same tensor, untouched) when ``<g, g_k> >= 0`` for every ``k``
    (Eq. 7 holds); else ``g~ = G^T v + g`` (Eq. 12), with ``v`` the dual's solution
    (:func:`solve_dual`): the closest vector to ``g`` with ``G g~ >= 0`` for ``margin = 0``
    (the primal, Eq. 11), biased towards the memories for ``margin > 0``. The products are
    taken in float64 on ``g``'s device; the result has ``g``'s dtype."""
    Gd, gd = G.to(torch.float64), g.to(torch.float64)
    Gg = Gd @ gd
    if not bool((Gg < 0).any()):  # Eq. 7: no constraint violated
        return g
    v = solve_dual(Gd @ Gd.T, Gg, margin).to(Gd.device)
    return (Gd.T @ v + gd).to(g.dtype)  # Eq. 12: g~ = G^T v* + g


@register
class GEM(Method):
    """GEM, Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning"
    (NeurIPS).

    An episodic memory ``M_k`` of ``memory_size`` samples is kept for every past task ``k``.
    After ``backward()`` (in ``after_backward``) the gradient ``g_k`` of the loss on all of
    ``M_k`` (Eq. 5) is computed for every past task, each as one flat vector over all trainable
    parameters. When the training gradient ``g`` violates a constraint ``<g, g_k> >= 0``
    (Eq. 7), it is replaced by ``g~ = G^T v* + g``, ``v*`` the solution of the dual quadratic
    program ``min_v 1/2 v^T G G^T v + g^T G^T v`` subject to ``v >= margin`` (Eq. 12; the
    paper's ``v >= 0``, raised to the official code's ``memory_strength``). Otherwise ``g`` is
    left as it is, bit for bit.

    The dual has one variable per past task, so it is solved here exactly by an active-set
    method (:func:`nonnegative_qp`, Lawson-Hanson), not by the official code's ``quadprog``: no
    compiled dependency, no ridge on ``G G^T`` to make it positive definite, and the same
    solution to rounding.

    The memory of a task is filled after the task is trained with samples drawn uniformly at
    random from it (:class:`~retain.core.buffers.ExemplarMemory` with one group per task).

    Args:
        memory_size: samples kept per past task (the paper's 256), or, with
            ``per_task=False``, the total shared equally by the tasks seen.
        per_task: see ``memory_size``.
        margin: the official code's ``memory_strength`` (the paper's small constant
            ``gamma``, 0.5 in every experiment): a lower bound on every dual variable, so a
            projected step also moves along every memory gradient. Non-negative; 0 is the exact
            projection of Eq. 11.
        loss_heads: ``"seen"`` (default; one growing head over all classes seen, also for
            every memory loss) or ``"task"`` (each memory on its own task's head, local
            labels; the current batch on its own head).

    Deviations and choices: docs/methods/gem.md
    """

    name = "gem"
    data_parallel = False
    data_parallel_note = "its episodic memory, filled from training data, would differ per process"
    train_seen_heads = True  # the projection moves past heads along their memory gradients

    def __init__(
        self,
        memory_size: int = 256,
        per_task: bool = True,
        margin: float = 0.5,
        loss_heads: str = "seen",
    ) -> None:
        super().__init__(loss_heads=loss_heads)
        if not margin >= 0:  # also refuses NaN
            raise ValueError(f"margin must be non-negative, got {margin}")
        self.memory = ExemplarMemory(memory_size, per_group=per_task)
        self.margin = float(margin)
        self.steps = 0  # training steps and projected steps of the current task
        self.projected = 0

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self.steps = self.projected = 0

    def _parameters(self) -> list[nn.Parameter]:
        assert self.model is not None
        return [p for p in self.model.parameters() if p.requires_grad]

    def memory_tasks(self) -> list[int]:
        """The past tasks that have an episodic memory, in order."""
        return self.memory.groups

    def memory_loss(self, k: int, task: Task) -> Tensor:
        """The loss on all of task ``k``'s memory (Eq. 5: ``ell(f_theta, M_k)``): over task
        ``k``'s head (``loss_heads="task"``) or over the heads seen so far (``"seen"``)."""
        assert self.model is not None
        m = self.memory.get_all()
        pick = m["group"] == k
        batch = Batch(m["x"][pick], m["y"][pick], m["task_ids"][pick], k)
        logits = self.model(batch.x, upto=self.current_task + 1)
        return self.cross_entropy(logits, batch, task)

    def memory_gradients(self, params: list[nn.Parameter], task: Task) -> list[list[Tensor | None]]:
        """The gradient of every past task's memory loss (per parameter; None if unused).
        Leaves ``.grad`` untouched."""
        with torch.enable_grad():
            return [
                list(torch.autograd.grad(self.memory_loss(k, task), params, allow_unused=True))
                for k in self.memory_tasks()
            ]

    def after_backward(self, batch: Batch, task: Task) -> None:
        self.steps += 1
        if self.memory.is_empty:
            return
        params = self._parameters()
        past = self.memory_gradients(params, task)
        used = [
            p.grad is not None or any(r[i] is not None for r in past) for i, p in enumerate(params)
        ]
        params = [p for p, u in zip(params, used) if u]
        past = [[r for r, u in zip(rows, used) if u] for rows in past]
        g = _flat([p.grad for p in params], params)
        G = torch.stack([_flat(rows, params) for rows in past])
        new = project_gradient(g, G, self.margin)
        if new is g:
            return  # no constraint violated: the gradient stays as backward() left it
        self.projected += 1
        offset = 0
        for p in params:
            k = p.numel()
            p.grad = new[offset : offset + k].view_as(p).clone()
            offset += k

    def after_task(self, task: Task) -> None:
        self.memory.add(
            task.x_train,
            task.y_train,
            torch.full_like(task.y_train, task.id),
            torch.full_like(task.y_train, task.id),  # one group per task
            selection="random",
            n_groups=task.id + 1,
        )

    def extra_metrics(self) -> dict[str, Any]:
        """The share of the last task's steps whose gradient was projected."""
        return {"projected_fraction": self.projected / self.steps if self.steps else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "memory": self.memory.state_dict(),
            "steps": self.steps,
            "projected": self.projected,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
        self.steps = int(state["steps"])
        self.projected = int(state["projected"])
