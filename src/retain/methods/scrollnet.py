"""ScrollNet: rank weights by importance with a slimmable network and scroll the ranking per task.

Yang, Wang, van de Weijer, "ScrollNet: Dynamic Weight Importance for Continual Learning",
ICCV-W 2023 (Sections 3.1-3.3, 4.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from retain.data.benchmark import Task
from retain.methods.base import Batch, BenchmarkInfo, Method, TaskTrainer, register
from retain.models.slimmable import (
    get_splits,
    make_slimmable,
    set_scroll,
    slimmable_modules,
    width,
)

if TYPE_CHECKING:
    import torch

    from retain.models.continual import ContinualModel


NARROW_LOSSES = ("ce", "base")


@register
class ScrollNet(Method):
    """ScrollNet (Yang et al., ICCV-W 2023) around any method: nested sub-networks, scrolled.

    Yang, Wang & van de Weijer, "ScrollNet: Dynamic Weight Importance for Continual
    Learning", ICCV Workshops 2023. ``setup`` makes the model slimmable with ``splits`` = K
    nested widths (:func:`~retain.models.slimmable.make_slimmable`: every Linear/Conv2d sliced
    to its first ``k/K`` channel groups, one BatchNorm per width). The loss of one batch is
    the sum over the K nested sub-networks, equal weights (Eq. 4/6)::

        base.loss(batch, task)                       # width K: the base's whole loss
        + sum_{k=K-1..1} subnet_loss_k(batch, task)  # narrower widths: its plain CE

    so regularisers count once per step (Eq. 8) and distillation only at full width (Eq. 7).
    Before task ``t`` the channel groups are scrolled by ``scroll_step * t`` (mod K) groups
    (Eq. 5): position ``i`` reads stored channel ``(i + shift) mod C``, so the group that was
    most important becomes the least. BatchNorm is not scrolled (Sec. 4.1); evaluation is at
    full width with the current scroll. The base method's hooks run unchanged at full width.

    Args:
        base: the wrapped method: a registered name or a :class:`Method` instance.
        base_args: keyword arguments of the base method (with a name only).
        splits: K, the number of nested sub-networks (2: ScrollNet-2, 4: ScrollNet-4; 1
            gives the base method exactly).
        scroll_step: groups to scroll per task (1 in the paper).
        penalty_per_width: add the base's ``regularizer()`` at every width, K times in all
            (the official EWC code's behaviour).
        narrow_loss: ``"ce"`` (default): the narrower widths' loss is the base's plain
            classification loss; ``"base"``: the base's whole ``loss``.

    Deviations and choices: docs/methods/scrollnet.md
    """

    name = "scrollnet"

    def __init__(
        self,
        base: str | Method = "finetune",
        base_args: dict[str, Any] | None = None,
        splits: int = 4,
        scroll_step: int = 1,
        penalty_per_width: bool = False,
        narrow_loss: str = "ce",
    ) -> None:
        if isinstance(base, Method):
            if base_args:
                raise ValueError("base_args only apply when base is given by name")
            self.base = base
        elif isinstance(base, str):
            from retain.methods import make_method

            self.base = make_method(base, **(base_args or {}))
        else:
            raise ValueError(f"base must be a method name or a Method, got {base!r}")
        if isinstance(self.base, ScrollNet):
            raise ValueError("ScrollNet cannot wrap ScrollNet")
        if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
            raise ValueError(f"splits must be a positive integer, got {splits!r}")
        if isinstance(scroll_step, bool) or not isinstance(scroll_step, int):
            raise ValueError(f"scroll_step must be an integer, got {scroll_step!r}")
        if narrow_loss not in NARROW_LOSSES:
            raise ValueError(
                f"narrow_loss must be one of {', '.join(NARROW_LOSSES)}, got {narrow_loss!r}"
            )
        super().__init__(loss_heads=self.base.loss_heads)
        self.narrow_loss = narrow_loss
        self.splits = splits
        self.scroll_step = scroll_step
        self.penalty_per_width = bool(penalty_per_width)
        self.task_agnostic = self.base.task_agnostic  # type: ignore[misc]
        # a base with a procedure of its own runs it in train_task; its loss refuses outside
        self.own_procedure = self.base.own_procedure  # type: ignore[misc]
        self.data_parallel = self.base.data_parallel  # type: ignore[misc]
        self.data_parallel_note = self.base.data_parallel_note  # type: ignore[misc]
        self._layers: list[nn.Module] = []

    # ------------------------------------------------------------------ lifecycle
    def setup(self, model: ContinualModel, info: BenchmarkInfo) -> None:
        """Make ``model`` slimmable in place (unless it already is, with the same K), then
        set up the base method on it."""
        super().setup(model, info)
        k = get_splits(model)
        if k is None:
            make_slimmable(model, self.splits)
        elif k != self.splits:
            raise ValueError(f"the model is slimmable with {k} splits, ScrollNet has {self.splits}")
        self._layers = slimmable_modules(model)
        self.base.setup(model, info)

    def scroll_for(self, task_id: int) -> int:
        """The scroll (in groups, mod K) used while training task ``task_id`` and after it."""
        return (self.scroll_step * task_id) % self.splits

    def before_task(self, task: Task) -> None:
        """The base's ``before_task`` first (so snapshots it takes, e.g. an old model, keep the
        previous task's scroll, as the official code's old model), then scroll."""
        super().before_task(task)
        self.base.before_task(task)
        set_scroll(self._layers, self.scroll_for(task.id))

    def resume_task(self, task: Task) -> None:
        """The scroll is restored with the model (``_extra_state``); the base resumes."""
        super().resume_task(task)
        self.base.resume_task(task)

    def before_epoch(self, task: Task, epoch: int) -> None:
        self.base.before_epoch(task, epoch)

    def after_task(self, task: Task) -> None:
        self.base.after_task(task)

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        return self.base.trainable_parameters(task)

    def batches(self, task: Task, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        return self.base.batches(task, batch_size, generator)

    def train_task(self, task: Task, trainer: TaskTrainer) -> None:
        # the trainer calls ``trainer.method.loss``, i.e. this wrapper's loss
        self.base.train_task(task, trainer)

    # ------------------------------------------------------------------ loss
    def loss(self, batch: Batch, task: Task) -> Tensor:
        """Sum over the K nested widths, full width first (the official order)."""
        total = self.base.loss(batch, task)
        for k in range(self.splits - 1, 0, -1):
            with width(self._layers, k):
                total = total + self.subnet_loss(batch, task)
        return total

    def subnet_loss(self, batch: Batch, task: Task) -> Tensor:
        """The loss of one narrower sub-network (the active width): the base's plain
        classification loss, plus its :meth:`~retain.methods.Method.regularizer` when
        ``penalty_per_width``. With ``narrow_loss="base"``: the base's whole loss."""
        if self.narrow_loss == "base":
            return self.base.loss(batch, task)
        loss = Method.loss(self.base, batch, task)
        if self.penalty_per_width:
            reg = self.base.regularizer()
            if reg is not None:
                loss = loss + reg
        return loss

    def after_backward(self, batch: Batch, task: Task) -> None:
        self.base.after_backward(batch, task)

    def after_step(self, batch: Batch, task: Task) -> None:
        self.base.after_step(batch, task)

    # ------------------------------------------------------------------ inference
    def predict(self, x: Tensor, task_id: int | None = None, upto: int | None = None) -> Tensor:
        """The base's prediction at full width, current scroll (for every task)."""
        return self.base.predict(x, task_id=task_id, upto=upto)

    def predict_both(self, x: Tensor, task_id: int, upto: int) -> tuple[Tensor, Tensor | None]:
        return self.base.predict_both(x, task_id, upto)

    def extra_metrics(self) -> dict[str, Any]:
        """The base method's metrics (BiC's bias layer, LUCIR's scale, ...), and the scroll
        (with more than one split: ScrollNet-1 is exactly its base)."""
        out = dict(self.base.extra_metrics())
        if self.splits > 1:
            out["scroll"] = self.scroll_for(self.current_task)
        return out

    def write_artifacts(self, run_dir: Path) -> None:
        self.base.write_artifacts(run_dir)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The base's state; the scroll itself is saved with the model (``_extra_state``)."""
        return {**super().state_dict(), "base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.base.load_state_dict(state["base"])
