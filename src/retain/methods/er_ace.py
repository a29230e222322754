"""ER-ACE: experience replay with an asymmetric cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from retain.data.benchmark import Task
from retain.methods._replay import ReplayMethod
from retain.methods.base import Batch, register

INCOMING_MASKS = ("batch", "task")


def masked_cross_entropy(logits: Tensor, target: Tensor, keep: Tensor) -> Tensor:
    """Cross-entropy of ``logits`` over the outputs ``keep`` (bool, one per output) only: the
    softmax normalises over those classes, and the other logits get no gradient."""
    return F.cross_entropy(logits.masked_fill(~keep, float("-inf")), target)


@register
class ERACE(ReplayMethod):
    """ER-ACE: replay in which the incoming batch's cross-entropy sees only its own classes.

    Caccia, Aljundi, Asadi, Tuytelaars, Pineau & Belilovsky, "New Insights on Reducing Abrupt
    Representation Change in Online Continual Learning", ICLR 2022, Sec. 4 (ER-ACE)::

        L = CE(f(x_in)[:, C_curr], y_in)  +  CE(f(x_bf)[:, C_old u C_curr], y_bf),

    with ``CE(z[:, C], y)`` the cross-entropy whose softmax runs over the classes ``C`` only.
    ``C_curr`` are the classes present in the incoming batch (the paper's choice), so the
    incoming samples never push the logits of the other classes down; the replayed batch,
    drawn uniformly from a reservoir over the whole stream (Vitter's algorithm R), is
    classified over every class seen so far. Replay starts as soon as the memory holds a
    sample (task-free, as the official code). The model is trained class-incrementally: the
    heads of the tasks seen so far form one growing head with global labels (``"seen"``
    protocol); task-aware evaluation reads each task's own head from it.

    Args:
        memory_size: buffer slots.
        minibatch_size: replayed samples per step (default: the incoming batch's size).
        incoming_mask: the classes of the incoming term: ``"batch"`` (default, the paper's):
            those present in the incoming batch; ``"task"``: every class of the batch's tasks
            (retain's earlier tutorial version; they differ when a batch misses a class).

    Deviations and choices: docs/methods/er_ace.md
    """

    name = "er-ace"

    def __init__(
        self,
        memory_size: int = 200,
        minibatch_size: int | None = None,
        incoming_mask: str = "batch",
    ) -> None:
        super().__init__(memory_size, minibatch_size, loss_heads="seen")
        if incoming_mask not in INCOMING_MASKS:
            raise ValueError(
                f"incoming_mask must be one of {', '.join(INCOMING_MASKS)}, got {incoming_mask!r}"
            )
        self.incoming_mask = incoming_mask

    def incoming_classes(self, batch: Batch, target: Tensor, n_out: int) -> Tensor:
        """Bool ``[n_out]``: the outputs the incoming batch's cross-entropy sees (``C_curr``)."""
        assert self.model is not None
        if self.incoming_mask == "batch":  # the classes present in the batch
            keep = torch.zeros(n_out, dtype=torch.bool, device=target.device)
            return keep.index_fill(0, target, True)
        if self.model.shared_head:  # every task has every output
            return torch.ones(n_out, dtype=torch.bool, device=target.device)
        seen = self.current_task + 1
        return self.model.own_task_mask(batch.task_ids.to(target.device), seen).any(0)

    def loss(self, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        model, seen = self.model, self.current_task + 1
        logits = model(batch.x, upto=seen)  # every class seen so far (or the shared head)
        dev = logits.device
        target = model.global_labels(batch.y.to(dev), batch.task_ids.to(dev))
        keep = self.incoming_classes(batch, target, logits.shape[1])
        loss = masked_cross_entropy(logits, target, keep)  # CE(f(x_in)[:, C_curr], y_in)
        batch.memo = {}  # the incoming samples enter the buffer after the step
        if not self.buffer.is_empty:
            mem = self.buffer.sample(self.memory_batch_size(batch))
            x, y, t = (mem[k].to(dev) for k in ("x", "y", "task_ids"))
            # CE(f(x_bf)[:, C_old u C_curr], y_bf): a forward of its own, as the official code
            loss = loss + F.cross_entropy(model(x, upto=seen), model.global_labels(y, t))
        return loss
