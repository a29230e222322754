"""What iCaRL, BiC and LUCIR share: a class-balanced exemplar memory chosen by herding, training
on the new task's data together with the exemplars, and a frozen copy of the previous model.

Not a method (the registry skips modules whose name starts with ``_``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from retain.core.buffers import SELECTIONS, ExemplarMemory, embed
from retain.core.distill import frozen_copy
from retain.data.benchmark import Task
from retain.data.iterate import iterate_batches
from retain.methods.base import Batch, BenchmarkInfo, Method
from retain.models.continual import ContinualModel


class ExemplarMethod(Method):
    """Base of the class-incremental exemplar methods (one growing head, ``loss_heads="seen"``).

    * Training data of task ``t``: its training set plus every exemplar (:meth:`train_data`).
    * ``before_task``: a frozen copy of the model as it was after task ``t-1``
      (:attr:`old_model`).
    * ``after_task``: the memory makes room and takes exemplars of the new classes, chosen by
      herding on the current model's features (:meth:`update_memory`).

    Args:
        memory_size: total exemplars shared by all classes seen (iCaRL's K), or per class with
            ``per_class``.
        per_class: see ``memory_size``.
        selection: ``"herding"`` (default) or ``"random"``.
    """

    def __init__(
        self, memory_size: int = 2000, per_class: bool = False, selection: str = "herding"
    ) -> None:
        super().__init__(loss_heads="seen")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, not {selection!r}")
        self.selection = selection
        self.memory = ExemplarMemory(memory_size, per_group=per_class)
        self.old_model: ContinualModel | None = None

    def setup(self, model: ContinualModel, info: BenchmarkInfo) -> None:
        if getattr(model, "shared_head", False):
            raise ValueError(
                f"{self.name} is class-incremental: it needs one head per task (head='task')"
            )
        super().setup(model, info)

    @property
    def n_old(self) -> int:
        """Classes of the tasks before the current one."""
        assert self.model is not None
        return sum(self.model.classes_per_task[: self.current_task])

    @property
    def n_seen(self) -> int:
        """Classes of the tasks up to and including the current one."""
        assert self.model is not None
        return sum(self.model.classes_per_task[: self.current_task + 1])

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        assert self.model is not None
        self.old_model = frozen_copy(self.model) if task.id > 0 else None

    def task_indices(self, task: Task) -> Tensor | None:
        """Indices of ``task``'s training samples used for training (None: all of them)."""
        return None

    def train_data(self, task: Task) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, local y, task ids)``: the task's training samples plus every exemplar."""
        idx = self.task_indices(task)
        x, y = task.x_train, task.y_train
        if idx is not None:
            x, y = x[idx], y[idx]
        parts = [(x, y, torch.full_like(y, task.id))]
        if not self.memory.is_empty:
            m = self.memory.get_all()
            parts.append((m["x"], m["y"], m["task_ids"]))
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def batches(self, task: Task, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        for x, y, t in iterate_batches(
            self.train_data(task), batch_size, generator=generator, shuffle=not task.ordered
        ):
            yield Batch(x, y, t)

    def global_targets(self, batch: Batch) -> Tensor:
        assert self.model is not None
        return self.model.global_labels(batch.y, batch.task_ids)

    def update_memory(self, task: Task) -> None:
        """Reduce the old classes' exemplars to the new quota; select the new classes'."""
        assert self.model is not None
        idx = self.task_indices(task)
        x, y = task.x_train, task.y_train
        if idx is not None:
            x, y = x[idx], y[idx]
        features = embed(self.model, x) if self.selection == "herding" else None
        self.memory.add(
            x,
            y,
            torch.full_like(y, task.id),
            task.class_offset + y,
            features=features,
            selection=self.selection,
            n_groups=task.class_offset + task.n_classes,
        )

    def after_task(self, task: Task) -> None:
        self.update_memory(task)

    def state_dict(self) -> dict[str, Any]:
        old = None if self.old_model is None else self.old_model.state_dict()
        return {**super().state_dict(), "memory": self.memory.state_dict(), "old_model": old}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        assert self.model is not None
        self.memory.load_state_dict(state["memory"])
        self.old_model = None
        if state["old_model"] is not None:
            self.old_model = frozen_copy(self.model)
            self.old_model.load_state_dict(state["old_model"])
