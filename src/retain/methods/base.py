"""The method interface: a few hooks around a training loop that the engine (or you) owns.

A method is used like this, by :func:`retain.fit` or by a loop of your own::

    method.setup(model, benchmark_info)
    for task in benchmark:
        method.before_task(task)
        opt = torch.optim.SGD(method.trainable_parameters(task), lr=0.01)
        for batch in method.batches(task, batch_size, generator):
            loss = method.loss(batch, task)
            opt.zero_grad(); loss.backward()
            method.after_backward()
            opt.step()
            method.after_step()
        method.after_task(task)
        logits = method.predict(x, task_id=task.id)      # task-aware
        logits = method.predict(x, upto=task.id + 1)     # task-agnostic over seen classes

Methods whose procedure is not "epochs of SGD" (Eidetic's prune-and-recover loop) override
:meth:`Method.train_task`, which receives the engine's :class:`~retain.engine.Trainer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.data.benchmark import Task
from retain.data.iterate import iterate_batches

if TYPE_CHECKING:
    from retain.engine.trainer import Trainer
    from retain.models.continual import ContinualModel

LOSS_HEADS = ("task", "seen")


@dataclass
class Batch:
    """A training batch. ``y`` holds local labels; ``task_ids`` the task of every sample;
    ``task`` is set when every sample comes from that one task (the common, fast case)."""

    x: Tensor
    y: Tensor
    task_ids: Tensor
    task: int | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class BenchmarkInfo:
    """What a method may know about the sequence before it starts (sizes, not data)."""

    n_tasks: int
    classes_per_task: list[int]
    input_shape: tuple[int, ...]


class Method:
    """Base class: plain fine-tuning. Subclasses override only the hooks they need.

    Args:
        loss_heads: which outputs the cross-entropy sees while training task ``t``.
            ``"task"`` (default): only task ``t``'s head, local labels (FACIL's multi-head
            training; task-incremental). ``"seen"``: the concatenated heads of tasks ``0..t``
            with global labels (class-incremental training, a single growing head).
    """

    #: registry name; hyperparameters are the keyword arguments of ``__init__``.
    name: ClassVar[str] = "base"
    #: whether the method can predict without a task id (else task-agnostic accuracy is NaN).
    task_agnostic: ClassVar[bool] = True
    #: whether :func:`retain.fit` may train it data-parallel (``torchrun``; see
    #: :mod:`retain.engine.distributed`); if not, ``data_parallel_note`` says why.
    data_parallel: ClassVar[bool] = True
    data_parallel_note: ClassVar[str] = ""

    def __init__(self, loss_heads: str = "task") -> None:
        if loss_heads not in LOSS_HEADS:
            raise ValueError(
                f"loss_heads must be one of {', '.join(LOSS_HEADS)}, got {loss_heads!r}"
            )
        self.loss_heads = loss_heads
        self.model: ContinualModel | None = None
        self.info: BenchmarkInfo | None = None
        self.current_task: int = -1

    # ------------------------------------------------------------------ lifecycle hooks
    def setup(self, model: ContinualModel, info: BenchmarkInfo) -> None:
        """Adapt the model once, before the first task (swap layers, add agents, ...)."""
        self.model = model
        self.info = info

    def before_task(self, task: Task) -> None:
        self.current_task = task.id

    def after_task(self, task: Task) -> None:
        """Consolidate after training a task (importance, masks, buffers, ...)."""

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        """Parameters the optimiser of ``task`` updates: the backbone and the heads in the loss."""
        assert self.model is not None
        heads = [task.id] if self.loss_heads == "task" else list(range(task.id + 1))
        return list(self.model.backbone.parameters()) + self.model.head_parameters(heads)

    def batches(self, task: Task, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Training batches of one epoch. Methods that mix in other data override this."""
        tid = torch.full((len(task.y_train),), task.id, dtype=torch.long)
        for x, y, t in iterate_batches(
            (task.x_train, task.y_train, tid),
            batch_size,
            generator=generator,
            shuffle=not task.ordered,
        ):
            yield Batch(x, y, t, task.id)

    def loss(self, batch: Batch, task: Task) -> Tensor:
        """Training loss of one batch; by default cross-entropy (see ``loss_heads``)."""
        assert self.model is not None
        if self.loss_heads == "task" and batch.task is not None:
            # one task's samples: its own head only (same as masking the other heads' logits)
            return F.cross_entropy(self.model(batch.x, task_id=batch.task), batch.y)
        return self.cross_entropy(self.forward_train(batch), batch, task)

    def forward_train(self, batch: Batch) -> Tensor:
        """Logits used by :meth:`cross_entropy`: all heads seen so far, concatenated."""
        assert self.model is not None
        return self.model(batch.x, upto=self.current_task + 1)

    def cross_entropy(self, logits: Tensor, batch: Batch, task: Task) -> Tensor:
        """CE on concatenated logits of heads ``0..t``: restricted to each sample's own task's
        outputs (``loss_heads="task"``) or over all of them with global labels (``"seen"``)."""
        assert self.model is not None
        if self.model.shared_head:
            return F.cross_entropy(logits, batch.y)
        target = self.model.global_labels(batch.y, batch.task_ids)
        if self.loss_heads == "task":
            own = self.model.own_task_mask(batch.task_ids, self.current_task + 1)
            logits = logits.masked_fill(~own, float("-inf"))
        return F.cross_entropy(logits, target)

    def after_backward(self) -> None:
        """Edit gradients between ``backward()`` and ``step()`` (masks, soft masks, freezing)."""

    def after_step(self) -> None:
        """Restore invariants after ``step()`` (re-zero pruned weights, path integrals)."""

    def train_task(self, task: Task, trainer: Trainer) -> None:
        """Train one task. The default is the engine's epochs of SGD with the hooks above."""
        trainer.train_epochs(task)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def predict(self, x: Tensor, task_id: int | None = None, upto: int | None = None) -> Tensor:
        """Logits. With ``task_id``: that task's head (task-aware). Without: the concatenated
        heads of tasks ``< upto`` (task-agnostic); ``upto`` defaults to the tasks seen so far."""
        assert self.model is not None
        if task_id is None and upto is None:
            upto = self.current_task + 1
        return self.model(x, task_id=task_id, upto=upto)

    @torch.inference_mode()
    def predict_both(self, x: Tensor, task_id: int, upto: int) -> tuple[Tensor, Tensor | None]:
        """Task-aware logits of ``task_id`` and task-agnostic logits over heads ``< upto``,
        from one forward pass (FACIL's evaluation). Methods whose task-aware forward differs
        from the task-agnostic one (per-task masks) override this."""
        assert self.model is not None
        logits = self.predict(x, upto=upto)
        if self.model.shared_head:
            return logits, logits
        start = sum(self.model.classes_per_task[:task_id])
        return logits[:, start : start + self.model.classes_per_task[task_id]], logits

    def extra_metrics(self) -> dict[str, Any]:
        """Method-specific numbers stored by :func:`retain.fit` under ``metrics["method"]``
        after every task (e.g. capacity per layer). Must be JSON-serialisable and
        deterministic (no times)."""
        return {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything besides the model's own state needed to resume (buffers, importances)."""
        return {"current_task": self.current_task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current_task = state["current_task"]


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"method name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls
