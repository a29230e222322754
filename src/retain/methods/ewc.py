"""Elastic Weight Consolidation, and the quadratic-penalty consumer MAS and SI share."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from retain.core.estimators import make_importance
from retain.core.importance import Importance, check_protect, protected_parameters
from retain.core.penalty import QuadraticPenalty
from retain.data.benchmark import Task
from retain.methods.base import Batch, BenchmarkInfo, Method, register


@register
class EWC(Method):
    """EWC (Kirkpatrick et al., PNAS 2017): a quadratic penalty weighted by the Fisher.

    Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017.
    Training task ``B`` after tasks ``A`` minimises Eq. 3 of the paper,
    ``L(theta) = L_B(theta) + sum_i lambda/2 * F_i (theta_i - theta*_A,i)^2``, with ``F`` the
    diagonal Fisher at the end of ``A``; with more tasks, one such term per previous task
    (``online=False``), or one running Fisher and the latest anchor (``online=True``,
    ``F <- alpha F + (1 - alpha) F_new``; with ``alpha=None`` the running mean
    ``F <- (t F + F_new) / (t + 1)``). The importance is pluggable (``importance="mas"``,
    ``"si"``, ``"spg"`` or any :class:`~retain.core.importance.Importance`). Plain SGD stays
    stable only while ``lr * 2 * scale * lamb * max F < 2`` (``scale = 1/2`` here).

    Args:
        lamb: lambda (ScrollNet's 5000 is the default).
        importance: estimator name (``"fisher"``, ``"mas"``, ``"si"``) or instance.
        importance_args: keyword options of the estimator.
        online: one running importance (see above) instead of one term per task.
        alpha: weight of the old importance in online mode; None: the running mean over
            tasks (HAT's and SPG's EWC).
        protect: which parameters are penalised: ``"backbone"``; ``"all"`` (backbone and
            heads); ``"auto"`` (default) = the backbone, plus the heads when later tasks train
            them too (a shared head, or ``loss_heads="seen"``). Per-task heads of a task-aware
            model are not trained after their task, so they need no penalty
            (:func:`~retain.core.importance.protected_parameters`, as SPG's mask).
        loss_heads: see :class:`~retain.methods.Method`; also the default output the
            importance is computed on.

    Deviations and choices: docs/methods/ewc.md
    """

    name = "ewc"
    #: the penalty is ``scale * lamb * P``: EWC's lambda/2.
    scale: ClassVar[float] = 0.5
    #: consolidation when ``online`` is False.
    offline_mode: ClassVar[str] = "separate"
    #: clamp of the accumulated importance (SI's ReLU).
    clamp_min: ClassVar[float | None] = None

    def __init__(
        self,
        lamb: float = 5000.0,
        importance: str | Importance = "fisher",
        importance_args: dict[str, Any] | None = None,
        online: bool = False,
        alpha: float | None = 0.5,
        protect: str = "auto",
        loss_heads: str = "task",
    ) -> None:
        super().__init__(loss_heads=loss_heads)
        if lamb < 0:
            raise ValueError(f"lamb must be >= 0, got {lamb}")
        self.lamb = float(lamb)
        self.estimator = make_importance(importance, **(importance_args or {}))
        self.online = online
        self.alpha = alpha
        self.protect = check_protect(protect)
        self.penalty: QuadraticPenalty | None = None

    # ------------------------------------------------------------------ hooks
    def setup(self, model, info: BenchmarkInfo | None) -> None:
        super().setup(model, info)
        params = protected_parameters(model, self.protect, self.loss_heads)
        online_mode = "mean" if self.alpha is None else "ema"
        mode = online_mode if self.online else self.offline_mode
        alpha = 0.5 if self.alpha is None else self.alpha
        self.penalty = QuadraticPenalty(params, mode, alpha, self.clamp_min)
        self.estimator.setup(params, self._penalty_grad)

    def _penalty_grad(self, name: str, value: Tensor) -> Tensor | None:
        assert self.penalty is not None
        g = self.penalty.gradient(name, value)
        return None if g is None else self.scale * self.lamb * g

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self.estimator.before_task(task)

    def regularizer(self) -> Tensor | None:
        """``scale * lamb * P(theta)``, or None before the first consolidation."""
        assert self.penalty is not None, "call setup() first"
        if not self.penalty.active or self.lamb == 0:
            return None
        return self.scale * self.lamb * self.penalty()

    def loss(self, batch: Batch, task: Task) -> Tensor:
        loss = super().loss(batch, task)
        reg = self.regularizer()
        return loss if reg is None else loss + reg

    def after_step(self, batch: Batch, task: Task) -> None:
        self.estimator.after_step()

    def after_task(self, task: Task) -> None:
        assert self.model is not None and self.penalty is not None
        importance = self.estimator.compute(self.model, task, self.loss_heads)
        self.penalty.consolidate(importance)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        assert self.penalty is not None
        return {
            **super().state_dict(),
            "penalty": self.penalty.state_dict(),
            "estimator": self.estimator.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.penalty is not None, "call setup() before load_state_dict()"
        super().load_state_dict(state)
        self.penalty.load_state_dict(state["penalty"])
        self.estimator.load_state_dict(state["estimator"])
