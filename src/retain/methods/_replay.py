"""What ER, DER, DER++ and Dynamos share: a reservoir buffer filled from the training stream.

Not a method (the registry skips modules whose name starts with ``_``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from retain.core.buffers import ReservoirBuffer
from retain.data.benchmark import Task
from retain.methods.base import Batch, Method


class ReplayMethod(Method):
    """Base of the reservoir-replay methods (Vitter's algorithm R over the whole stream,
    :class:`~retain.core.buffers.ReservoirBuffer`).

    * ``loss`` decides what enters the buffer: it sets ``batch.memo`` to the per-sample values
      to store with the stream samples (``{}`` for none; DER's logits at insertion time), or
      leaves it ``None`` to store nothing (Dynamos' warm-up).
    * ``after_step`` offers the batch to the buffer, after the optimiser step, so the memory
      batch of a step never holds that step's own samples.
    * Replayed samples train their own heads: the heads of every task so far are trained
      whatever ``loss_heads`` says.

    Args:
        memory_size: buffer slots.
        minibatch_size: memory samples per step and term (default: the stream batch's size).
        loss_heads: ``"seen"`` (one growing head) or ``"task"``.
    """

    data_parallel: ClassVar[bool] = False
    data_parallel_note: ClassVar[str] = (
        "its replay buffer, filled from training batches, would differ per process"
    )
    train_seen_heads: ClassVar[bool] = True

    def __init__(
        self, memory_size: int, minibatch_size: int | None = None, loss_heads: str = "seen"
    ) -> None:
        super().__init__(loss_heads=loss_heads)
        self.buffer = ReservoirBuffer(memory_size)
        self.minibatch_size = minibatch_size

    def memory_batch_size(self, batch: Batch) -> int:
        """Memory samples drawn for one term of ``batch``'s step."""
        return self.minibatch_size or len(batch)

    def after_step(self, batch: Batch, task: Task) -> None:
        if batch.memo is not None:
            self.buffer.add(batch.x, batch.y, batch.task_ids, **batch.memo)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
