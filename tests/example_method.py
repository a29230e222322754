"""My ER-ACE: a version of experience replay with an asymmetric cross-entropy, from scratch."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from retain.core.buffers import ReservoirBuffer
from retain.data.benchmark import Task
from retain.methods import Batch, BenchmarkInfo, Method, register
from retain.models import ContinualModel


@register
class MyERACE(Method):
    """A version of ER-ACE (Caccia et al., "New insights on reducing abrupt representation
    change in online continual learning", ICLR 2022): the incoming batch's cross-entropy sees
    only the logits of its task's classes, a replayed batch's those of every class seen so far,
    so learning new classes does not push the old classes' logits down::

        L = CE(f(x)[:, C_t], y) + CE(f(x_mem)[:, C_0 u ... u C_t], y_mem)     (replay from t=1)

    The memory is a reservoir over the whole stream (Vitter's algorithm R), offered each
    incoming batch after the optimiser step. (The paper masks to the classes present in the
    incoming batch, as retain's ``er-ace`` does; this version uses the batch's task's classes.)

    Args:
        memory_size: buffer slots.
    """

    name = "my-er-ace"
    data_parallel = False
    data_parallel_note = "its replay buffer, filled from training batches, would differ per process"

    def __init__(self, memory_size: int = 200) -> None:
        super().__init__(loss_heads="task")
        self.buffer = ReservoirBuffer(memory_size)

    def setup(self, model: ContinualModel, info: BenchmarkInfo) -> None:
        if model.shared_head:
            raise ValueError("my-er-ace needs one head per task (head='task'), not a shared head")
        super().setup(model, info)

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        """The backbone and the heads of tasks ``0..t`` (replayed samples train theirs)."""
        assert self.model is not None
        heads = self.model.head_parameters(range(task.id + 1))
        return list(self.model.backbone.parameters()) + heads

    def loss(self, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        loss = F.cross_entropy(self.model(batch.x, task_id=task.id), batch.y)
        if task.id > 0:
            mem = self.buffer.sample(len(batch))
            logits = self.model(mem["x"], upto=task.id + 1)
            target = self.model.global_labels(mem["y"], mem["task_ids"])
            loss = loss + F.cross_entropy(logits, target)
        return loss

    def after_step(self, batch: Batch, task: Task) -> None:
        self.buffer.add(batch.x, batch.y, batch.task_ids)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
