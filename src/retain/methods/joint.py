"""Joint training on all data seen so far: the usual upper bound of continual learning."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from retain.data.benchmark import Task
from retain.data.iterate import iterate_batches
from retain.methods.base import Batch, Method, TaskTrainer, procedure, register


@register
class Joint(Method):
    """At task ``t``, train on the union of the training sets of tasks ``0..t``.

    Not a continual learner (it keeps every sample); it bounds what one would hope to reach.
    Each task continues from the previous task's weights, as in FACIL's joint baseline.

    Args:
        loss_heads: ``"seen"`` (default) trains one classifier over all classes seen so far
            (the class-incremental upper bound, which also bounds task-aware accuracy);
            ``"task"`` trains each sample on its own task's head only.

    Deviations and choices: docs/methods/baselines.md#joint
    """

    name = "joint"
    own_procedure = True  # train_task: see retain.methods.base.procedure
    train_seen_heads = True  # every seen task's samples train their own heads

    def __init__(self, loss_heads: str = "seen") -> None:
        super().__init__(loss_heads=loss_heads)
        self._seen: list[Task] = []

    @procedure
    def train_task(self, task: Task, trainer: TaskTrainer) -> None:
        # the tasks so far come from the benchmark itself, so nothing needs checkpointing
        self._seen = trainer.benchmark.tasks[: task.id + 1]
        trainer.train_epochs(task)

    def batches(self, task: Task, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        seen = self._seen or [task]
        data = (
            torch.cat([t.x_train for t in seen]),
            torch.cat([t.y_train for t in seen]),
            torch.cat([torch.full((len(t.y_train),), t.id, dtype=torch.long) for t in seen]),
        )
        for x, y, t in iterate_batches(data, batch_size, generator=generator, shuffle=True):
            yield Batch(x, y, t)
