"""Experience replay with a reservoir buffer."""

from __future__ import annotations

import torch
from torch import Tensor

from retain.data.benchmark import Task
from retain.methods._replay import ReplayMethod
from retain.methods.base import Batch, register


def mixed_batch(batch: Batch, memory: dict[str, Tensor]) -> Batch:
    """``batch`` followed by replayed samples, as one batch of mixed tasks."""
    return Batch(
        torch.cat([batch.x, memory["x"]]),
        torch.cat([batch.y, memory["y"]]),
        torch.cat([batch.task_ids, memory["task_ids"]]),
    )


@register
class ER(ReplayMethod):
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

    Deviations and choices: docs/methods/er.md
    """

    name = "er"

    def __init__(
        self, memory_size: int = 200, minibatch_size: int | None = None, loss_heads: str = "seen"
    ) -> None:
        super().__init__(memory_size, minibatch_size, loss_heads)

    def memory_batch(self, batch: Batch) -> Batch:
        """``batch`` plus a memory batch (just ``batch`` while the buffer is empty)."""
        if self.buffer.is_empty:
            return batch
        return mixed_batch(batch, self.buffer.sample(self.memory_batch_size(batch)))

    def loss(self, batch: Batch, task: Task) -> Tensor:
        batch.memo = {}  # the stream samples enter the buffer after the step
        return super().loss(self.memory_batch(batch), task)
