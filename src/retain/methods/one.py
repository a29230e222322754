"""A fresh model per task: the reference of forward transfer (FWT) and of no interference."""

from __future__ import annotations

import copy

from torch import Tensor

from retain.core.distill import frozen_copy
from retain.data.benchmark import Task
from retain.methods.base import Method, register
from retain.models.continual import ContinualModel


@register
class One(Method):
    """Train every task on its own copy of the initial model; keep each trained copy.

    Task-aware prediction uses the copy trained on that task. Task-agnostic prediction
    concatenates every copy's own head (an ensemble of independent experts), so it measures
    how well separate models' confidences compare, not continual learning.

    Deviations and choices: docs/methods/baselines.md#one
    """

    name = "one"
    shared_forward = False

    def __init__(self) -> None:
        super().__init__(loss_heads="task")
        self._initial: dict[str, Tensor] | None = None
        self.experts: list[ContinualModel] = []

    def setup(self, model, info) -> None:
        super().setup(model, info)
        self._initial = copy.deepcopy(model.state_dict())

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        assert self.model is not None and self._initial is not None
        self.model.load_state_dict(self._initial)

    def after_task(self, task: Task) -> None:
        assert self.model is not None
        self.experts.append(frozen_copy(self.model))

    def _expert(self, task_id: int) -> ContinualModel:
        assert self.model is not None
        return self.experts[task_id] if task_id < len(self.experts) else self.model

    def forward_task(self, x: Tensor, task_id: int) -> Tensor:
        """Task ``task_id``'s logits from its own expert (the model itself while it trains)."""
        return self._expert(task_id)(x, task_id=task_id)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "initial": self._initial,
            "experts": [e.state_dict() for e in self.experts],
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        assert self.model is not None
        self._initial = state["initial"]
        self.experts = []
        for sd in state["experts"]:
            expert = frozen_copy(self.model)  # frozen like the experts after_task makes
            expert.load_state_dict(sd)
            self.experts.append(expert)
