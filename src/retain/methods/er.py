"""Experience replay with a reservoir buffer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from retain.core.buffers import ReservoirBuffer
from retain.data.benchmark import Task
from retain.methods.base import Batch, Method, register


def mixed_batch(batch: Batch, memory: dict[str, Tensor]) -> Batch:
    """``batch`` followed by replayed samples, as one batch of mixed tasks."""
    return Batch(
        torch.cat([batch.x, memory["x"]]),
        torch.cat([batch.y, memory["y"]]),
        torch.cat([batch.task_ids, memory["task_ids"]]),
    )


@register
class ER(Method):
    """Experience replay (ER): every batch is trained together with a memory batch.

    Chaudhry et al. 2019, "On tiny episodic memories in continual learning" (ER with a
    reservoir memory, their Algorithm 1), and Riemer et al. 2019; as in Buzzega et al. 2020
    (Mammoth): each stream batch ``B`` is concatenated with ``|B|`` samples drawn uniformly
    from a reservoir buffer (:class:`~retain.core.buffers.ReservoirBuffer`, Vitter's algorithm
    R) and the loss is the cross-entropy over the concatenation, ``mean_{(x,y) in B u M} CE``.
    After the optimiser step the stream batch is offered to the buffer (``after_step``), so the
    memory batch of a step never contains that step's own samples.

    Args:
        memory_size: buffer slots.
        minibatch_size: memory samples per step (default: the stream batch's size).
        loss_heads: ``"seen"`` (default): one growing head over all classes seen so far,
            global labels (class-incremental training); ``"task"``: each sample on its own
            task's head.
    """

    name = "er"
    data_parallel = False
    data_parallel_note = "its replay buffer, filled from training batches, would differ per process"

    def __init__(
        self, memory_size: int = 200, minibatch_size: int | None = None, loss_heads: str = "seen"
    ) -> None:
        super().__init__(loss_heads=loss_heads)
        self.buffer = ReservoirBuffer(memory_size)
        self.minibatch_size = minibatch_size
        self._pending: Batch | None = None

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        """The backbone and the heads of every task so far: replayed samples train their own
        heads with either ``loss_heads``."""
        assert self.model is not None
        heads = list(range(task.id + 1))
        return list(self.model.backbone.parameters()) + self.model.head_parameters(heads)

    def memory_batch(self, batch: Batch) -> Batch:
        """``batch`` plus a memory batch (just ``batch`` while the buffer is empty)."""
        if self.buffer.is_empty:
            return batch
        return mixed_batch(batch, self.buffer.sample(self.minibatch_size or len(batch)))

    def loss(self, batch: Batch, task: Task) -> Tensor:
        self._pending = batch
        return super().loss(self.memory_batch(batch), task)

    def after_step(self) -> None:
        if self._pending is not None:
            b = self._pending
            self.buffer.add(b.x, b.y, b.task_ids)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
