"""Learning without Forgetting: distil the previous model's old-task outputs on new data."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from retain.core.distill import frozen_copy, kd_cross_entropy
from retain.data.benchmark import Task
from retain.methods.base import Batch, Method, register

KD_HEADS = ("separate", "concat")


@register
class LwF(Method):
    """LwF (Li & Hoiem, TPAMI 2017): keep the old tasks' outputs on the new task's data.

    A frozen copy of the model is taken after every task. Training task ``t`` minimises
    ``L_new + lamb * L_old`` (Sec. 3), where ``L_old`` is the knowledge-distillation
    cross-entropy (Eq. 2) between the copy's and the current model's temperature-softened
    outputs of the old heads, at temperature ``T = 2`` (:func:`~retain.core.distill.
    kd_cross_entropy`). With a shared head (domain-incremental) the old outputs are that head's.

    Not implemented: the paper's optional warm-up (training the new head alone first); FACIL
    and ScrollNet do not use it either.

    Args:
        lamb: weight of the distillation (the paper's lambda_o; 1 as the paper and ScrollNet).
        temperature: T (2, as the paper).
        kd_heads: ``"separate"`` (default, the paper): one distillation term per old head,
            summed; ``"concat"``: one term over the old heads' concatenated logits (FACIL and
            ScrollNet).
        loss_heads: see :class:`~retain.methods.Method`.

    Deviations and choices: docs/methods/lwf.md
    """

    name = "lwf"

    def __init__(
        self,
        lamb: float = 1.0,
        temperature: float = 2.0,
        kd_heads: str = "separate",
        loss_heads: str = "task",
    ) -> None:
        super().__init__(loss_heads=loss_heads)
        if kd_heads not in KD_HEADS:
            raise ValueError(f"kd_heads must be one of {', '.join(KD_HEADS)}, got {kd_heads!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.lamb = float(lamb)
        self.temperature = float(temperature)
        self.kd_heads = kd_heads
        self.old_model: torch.nn.Module | None = None

    def _old_heads(self) -> list[int]:
        """Heads whose outputs are distilled while training the current task."""
        assert self.model is not None
        return [0] if self.model.shared_head else list(range(self.current_task))

    def distillation(self, features: Tensor, x: Tensor) -> Tensor | None:
        """``L_old`` for a batch: the current model's old-head logits (from ``features``)
        against the old model's on ``x``; None when there is nothing to distil."""
        assert self.model is not None
        if self.old_model is None or self.lamb == 0:
            return None
        heads = self._old_heads()
        if not heads:
            return None
        with torch.no_grad():
            old_features = self.old_model.features(x)
            old = [self.old_model.heads[j](old_features) for j in heads]
        new = [self.model.heads[j](features) for j in heads]
        T = self.temperature
        if self.kd_heads == "concat":
            return kd_cross_entropy(torch.cat(new, 1), torch.cat(old, 1), T)
        return sum(kd_cross_entropy(n, o, T) for n, o in zip(new, old, strict=True))

    def loss(self, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        features = self.model.features(batch.x)
        if self.loss_heads == "task" and batch.task is not None:
            ce = F.cross_entropy(self.model.logits(features, task_id=batch.task), batch.y)
        else:
            logits = self.model.logits(features, upto=self.current_task + 1)
            ce = self.cross_entropy(logits, batch, task)
        kd = self.distillation(features, batch.x)
        return ce if kd is None else ce + self.lamb * kd

    def after_task(self, task: Task) -> None:
        assert self.model is not None
        self.old_model = frozen_copy(self.model)

    def state_dict(self) -> dict[str, Any]:
        old = None if self.old_model is None else self.old_model.state_dict()
        return {**super().state_dict(), "old_model": old}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state["old_model"] is None:
            self.old_model = None
        else:
            self.old_model = frozen_copy(self.model)
            self.old_model.load_state_dict(state["old_model"])
