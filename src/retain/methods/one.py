"""A fresh model per task: the reference of forward transfer (FWT) and of no interference."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from retain.data.benchmark import Task
from retain.methods.base import Method, register
from retain.models.continual import ContinualModel


@register
class One(Method):
    """Train every task on its own copy of the initial model; keep each trained copy.

    Task-aware prediction uses the copy trained on that task. Task-agnostic prediction
    concatenates every copy's own head (an ensemble of independent experts), so it measures
    how well separate models' confidences compare, not continual learning.
    """

    name = "one"

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
        expert = copy.deepcopy(self.model).eval()
        for p in expert.parameters():
            p.requires_grad_(False)
        self.experts.append(expert)

    def _expert(self, task_id: int) -> ContinualModel:
        assert self.model is not None
        return self.experts[task_id] if task_id < len(self.experts) else self.model

    @torch.inference_mode()
    def predict(self, x: Tensor, task_id: int | None = None, upto: int | None = None) -> Tensor:
        if task_id is not None:
            return self._expert(task_id)(x, task_id=task_id)
        upto = self.current_task + 1 if upto is None else upto
        return torch.cat([self._expert(t)(x, task_id=t) for t in range(upto)], dim=1)

    @torch.inference_mode()
    def predict_both(self, x: Tensor, task_id: int, upto: int) -> tuple[Tensor, Tensor]:
        return self.predict(x, task_id=task_id), self.predict(x, upto=upto)

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
            expert = copy.deepcopy(self.model).eval()
            expert.load_state_dict(sd)
            self.experts.append(expert)
