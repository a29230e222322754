"""The quadratic penalty: the consumer of importance estimates behind EWC, MAS and SI.

After every task ``t`` an importance ``F_t`` (one tensor per parameter) and an anchor
``theta*_t`` (the parameter values then) are *consolidated*; during later training the penalty
``P(theta) = sum_i w_i (theta_i - c_i)^2 (+ a constant)`` is added to the loss, scaled by the
method (EWC: ``lambda/2``; MAS, SI: ``lambda``). Four ways to consolidate (``mode``):

``"separate"``: one term per task, ``P = sum_t sum_i F_t,i (theta_i - theta*_t,i)^2``
    (Kirkpatrick et al., 2017: "a separate penalty for each previous task"). Stored exactly,
    not as T copies: a sum of quadratics in ``theta_i`` is one quadratic,
    ``A_i (theta_i - m_i)^2 + r_i`` with ``A = sum_t F_t``, ``m = sum_t F_t theta*_t / A`` and
    ``r >= 0``, updated in a numerically stable way (the parallel-variance formula). Same
    value and gradient, one term per parameter whatever the number of tasks.
``"ema"``: online EWC as in FACIL/ScrollNet, ``F <- alpha F + (1 - alpha) F_t`` and one anchor,
    the latest. Like FACIL, ``F`` starts at zero, so after the first task it is
    ``(1 - alpha) F_0``.
``"sum"``: ``F <- F + F_t``, latest anchor (MAS's accumulated importance; SI's Eq. 5).
``"mean"``: ``F <- (t F + F_t) / (t + 1)`` after task ``t`` (0-based), the running mean of the
    tasks' importances, latest anchor: the EWC of HAT's code (Serra et al., 2018), which SPG
    (Konishi et al., 2023) compares against. Unlike ``"separate"`` and ``"sum"``, the weight
    does not grow with the number of tasks, so the largest stable lambda does not shrink.

``clamp_min`` (e.g. 0 for SI, whose official code applies a ReLU to the accumulated
importance) clamps the accumulated weight after every consolidation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

MODES = ("separate", "ema", "sum", "mean")


class QuadraticPenalty:
    """``sum_i w_i (theta_i - c_i)^2`` over named parameters, consolidated after each task.

    Args:
        params: ``{name: parameter}`` to penalise (the live tensors; they are read, never
            written).
        mode: ``"separate"``, ``"ema"``, ``"sum"`` or ``"mean"`` (see the module docstring).
        alpha: the weight of the old importance in ``"ema"`` mode.
        clamp_min: if set, clamp the accumulated weight from below after each consolidation.

    Attributes:
        weight: ``{name: accumulated importance}`` (``A`` above); empty before the first task.
        center: ``{name: anchor}`` (the importance-weighted mean anchor in ``"separate"``
            mode; the latest anchor otherwise).
        n_tasks: how many consolidations so far.
    """

    def __init__(
        self,
        params: Mapping[str, Tensor],
        mode: str = "separate",
        alpha: float = 0.5,
        clamp_min: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.params = dict(params)
        self.mode = mode
        self.alpha = alpha
        self.clamp_min = clamp_min
        self.weight: dict[str, Tensor] = {}
        self.center: dict[str, Tensor] = {}
        self.const = torch.zeros((), dtype=torch.float64)
        self.n_tasks = 0

    @property
    def active(self) -> bool:
        return self.n_tasks > 0

    @torch.no_grad()
    def consolidate(
        self, importance: Mapping[str, Tensor], anchor: Mapping[str, Tensor] | None = None
    ) -> None:
        """Add one task: its ``importance`` and ``anchor`` (default: the parameters' current
        values). Parameters missing from ``importance`` get zero importance."""
        for n, p in self.params.items():
            a = (anchor[n] if anchor is not None else p).detach().clone()
            f = importance.get(n)
            f = torch.zeros_like(p) if f is None else f.detach().to(p.dtype).clone()
            if f.shape != p.shape:
                raise ValueError(f"importance of {n} has shape {tuple(f.shape)}, not {p.shape}")
            if n not in self.weight:  # first task
                w_old, c_old = torch.zeros_like(f), a
            else:
                w_old, c_old = self.weight[n], self.center[n]
            if self.mode == "separate":
                w = w_old + f
                safe = torch.where(w > 0, w, torch.ones_like(w))
                # exact at the edges: c = a where nothing was held, c = c_old where f = 0
                c = torch.where(w_old > 0, c_old + f / safe * (a - c_old), a)
                # the constant left over when two quadratics merge into one
                gap = (w_old * f / safe * (c_old - a).square()).double().sum()
                self.const = self.const + gap
            else:
                if self.mode == "ema":
                    w = self.alpha * w_old + (1 - self.alpha) * f
                elif self.mode == "mean":
                    w = (self.n_tasks * w_old + f) / (self.n_tasks + 1)
                else:
                    w = w_old + f
                c = a
            if self.clamp_min is not None:
                w = w.clamp_min(self.clamp_min)
            self.weight[n], self.center[n] = w, c
        self.n_tasks += 1

    def __call__(self) -> Tensor:
        """The penalty at the parameters' current values (differentiable; 0 before the first
        consolidation)."""
        total: Tensor | None = None
        for n, w in self.weight.items():
            term = (w * (self.params[n] - self.center[n]).square()).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return total + self.const.to(total.dtype)

    def gradient(self, name: str, value: Tensor) -> Tensor | None:
        """d penalty / d theta of parameter ``name`` at ``value`` (None when not penalised)."""
        w = self.weight.get(name)
        if w is None:
            return None
        return 2 * w * (value - self.center[name])

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "alpha": self.alpha,
            "n_tasks": self.n_tasks,
            "weight": self.weight,
            "center": self.center,
            "const": self.const,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"penalty state of mode {state['mode']!r}, not {self.mode!r}")
        missing = set(state["weight"]) ^ set(self.params) if state["weight"] else set()
        if missing:
            raise ValueError(f"penalty state does not match the parameters: {sorted(missing)}")
        self.alpha = state["alpha"]
        self.n_tasks = state["n_tasks"]
        self.weight = {n: t.clone() for n, t in state["weight"].items()}
        self.center = {n: t.clone() for n, t in state["center"].items()}
        self.const = state["const"].clone()
