"""Dark Experience Replay: replay with the logits the network gave when a sample was stored."""

from __future__ import annotations

import torch
from torch import Tensor

from retain.core.distill import logit_mse
from retain.data.benchmark import Task
from retain.methods._replay import ReplayMethod
from retain.methods.base import Batch, register


@register
class DER(ReplayMethod):
    """DER: replay that also matches the logits a sample had when it entered the buffer.

    Buzzega, Boschini, Porrello, Abati & Calderara, "Dark Experience for General Continual
    Learning: a Strong, Simple Baseline", NeurIPS 2020, Eq. 6::

        L = CE(f(x), y) over the stream batch  +  alpha * || f(x') - z' ||^2 over a memory batch,

    where ``z'`` are the logits the network produced for ``x'`` when ``x'`` entered the
    reservoir buffer (Vitter's algorithm R, over the whole stream), over every head. DER++
    (``derpp``, Eq. 7) adds ``beta * CE(f(x''), y'')`` on a second, independent memory batch
    (``beta`` here; 0 for DER).

    Args:
        memory_size: buffer slots.
        alpha: weight of the logit MSE.
        beta: weight of the cross-entropy on replayed labels (DER++; 0 is DER).
        minibatch_size: memory samples per term and step (default: the stream batch's size).
        loss_heads: ``"seen"`` (default, one growing head) or ``"task"``.

    Deviations and choices: docs/methods/der.md
    """

    name = "der"

    def __init__(
        self,
        memory_size: int = 200,
        alpha: float = 0.3,
        beta: float = 0.0,
        minibatch_size: int | None = None,
        loss_heads: str = "seen",
    ) -> None:
        super().__init__(memory_size, minibatch_size, loss_heads)
        if alpha < 0 or beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def loss(self, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        n = len(batch)
        mb = self.memory_batch_size(batch)
        mems = []
        if not self.buffer.is_empty:
            mems.append(self.buffer.sample(mb))
            if self.beta > 0:
                mems.append(self.buffer.sample(mb))
        x = torch.cat([batch.x, *(m["x"] for m in mems)]) if mems else batch.x
        full = self.model(x)  # every head: what is stored and matched
        seen = sum(self.model.classes_per_task[: self.current_task + 1])
        z = full[:n]
        loss = self.cross_entropy(z if self.model.shared_head else z[:, :seen], batch, task)
        batch.memo = {"logits": z.detach()}  # stored with the samples after the step
        if mems:
            m = mems[0]
            zm = full[n : n + len(m["y"])]
            mask = None
            if self.loss_heads == "task" and not self.model.shared_head:
                mask = self.model.own_task_mask(m["task_ids"], self.model.n_tasks)
            loss = loss + self.alpha * logit_mse(zm, m["logits"], mask)
            if self.beta > 0:
                m2 = mems[1]
                z2 = full[n + len(m["y"]) :]
                if not self.model.shared_head:
                    z2 = z2[:, :seen]
                replay = Batch(m2["x"], m2["y"], m2["task_ids"])
                loss = loss + self.beta * self.cross_entropy(z2, replay, task)
        return loss
