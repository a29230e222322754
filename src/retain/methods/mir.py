"""Maximally Interfered Retrieval: replay the memory samples a virtual step would hurt most."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from retain.data.benchmark import Task
from retain.methods._replay import ReplayMethod
from retain.methods.base import Batch, TaskTrainer, register
from retain.methods.er import mixed_batch


def top_interfered(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest ``scores`` (ties: the earlier candidate first), in
    increasing order, so that with ``k >= len(scores)`` every candidate keeps its place."""
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


@contextmanager
def _same_rng(device: torch.device) -> Iterator[None]:
    """Run a block with torch's generators restored afterwards (dropout masks of a scoring pass
    leave the training forward's random numbers as they were)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@register
class MIR(ReplayMethod):
    """MIR: experience replay of the memory samples whose loss a virtual step raises most.

    Aljundi, Caccia, Belilovsky, Caccia, Lin, Charlin & Tuytelaars, "Online Continual Learning
    with Maximally Interfered Retrieval", NeurIPS 2019, Sec. 3 (ER-MIR, Algorithm 1). At every
    step with incoming batch ``B``:

    1. draw ``C`` candidates uniformly from the reservoir (the buffer's own generator);
    2. take the virtual SGD step ``theta_v = theta - lr * grad L(f_theta(B))`` on the
       incoming batch's cross-entropy (``torch.autograd.grad``: no ``.grad``, no weight and no
       optimiser state is touched; batch-norm statistics and the random numbers are restored);
    3. score each candidate by ``s(x) = l(f_theta_v(x), y) - l(f_theta(x), y)`` and keep the
       ``k`` with the largest scores;
    4. train on ``B`` concatenated with them, as ER: ``mean_{(x,y) in B u M_k} CE``.

    The stream batch enters the reservoir after the optimiser step. With ``candidates <= k``
    every candidate is replayed in its drawn order, unscored: MIR is then ER with a memory
    batch of ``candidates`` (ER exactly for ``candidates == k``).

    Args:
        memory_size: buffer slots.
        candidates: samples drawn from the memory per step and scored (``C``; the official
            code's ``subsample``, 50); no more than ``k``: all are replayed, unscored (ER with
            a memory batch of ``candidates``).
        minibatch_size: samples replayed per step (``k``; default: the stream batch's size).
        lr: learning rate of the virtual step; ``None`` (default): the run's learning rate at
            the current epoch (the trainer's ``lr`` after its ``lr_milestones``), read in
            ``train_task``; a loop of one's own that does not call ``train_task`` must give it.
        loss_heads: ``"seen"`` (default): one growing head over all classes seen so far;
            ``"task"``: each sample on its own task's head.

    Deviations and choices: docs/methods/mir.md
    """

    name = "mir"

    def __init__(
        self,
        memory_size: int = 200,
        candidates: int = 50,
        minibatch_size: int | None = None,
        lr: float | None = None,
        loss_heads: str = "seen",
    ) -> None:
        super().__init__(memory_size, minibatch_size, loss_heads)
        if int(candidates) < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
        if lr is not None and not float(lr) > 0:
            raise ValueError(f"lr must be positive (or None: the run's), got {lr}")
        self.candidates = int(candidates)
        self.lr = None if lr is None else float(lr)
        self._schedule: tuple[float, list[int], float] | None = None  # the trainer's lr
        self._run_lr: float | None = None  # the trainer's lr at the current epoch

    # ------------------------------------------------------------------ the learning rate
    def train_task(self, task: Task, trainer: TaskTrainer) -> None:
        """The engine's epochs of SGD, after reading the run's lr and its milestones."""
        c = trainer.config
        self._schedule = (float(c.lr), sorted(c.lr_milestones), float(c.lr_gamma))
        self._run_lr = None
        super().train_task(task, trainer)

    def before_epoch(self, task: Task, epoch: int) -> None:
        if self._schedule is not None:  # MultiStepLR's lr at this epoch of the task
            lr, milestones, gamma = self._schedule
            self._run_lr = lr * gamma ** bisect.bisect_right(milestones, epoch)

    def virtual_lr(self) -> float:
        """The learning rate of the virtual step (``lr``, else the run's at this epoch)."""
        if self.lr is not None:
            return self.lr
        if self._run_lr is None:
            raise RuntimeError(
                "mir needs the lr of its virtual step: pass mir's lr=..., or train through "
                "method.train_task(task, trainer), which reads the trainer's"
            )
        return self._run_lr

    # ------------------------------------------------------------------ retrieval
    def per_sample_loss(self, logits: Tensor, y: Tensor, task_ids: Tensor) -> Tensor:
        """The cross-entropy of every sample, on the outputs :meth:`cross_entropy` uses."""
        assert self.model is not None
        if self.model.shared_head:
            return F.cross_entropy(logits, y, reduction="none")
        target = self.model.global_labels(y, task_ids)
        if self.loss_heads == "task":
            own = self.model.own_task_mask(task_ids, self.current_task + 1)
            logits = logits.masked_fill(~own, float("-inf"))
        return F.cross_entropy(logits, target, reduction="none")

    def _forward(self, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """Logits over the seen heads with ``params`` in place of the model's own (``None``:
        its own), leaving its buffers (batch-norm statistics) and the random numbers as they
        were."""
        assert self.model is not None
        buffers = {k: b.clone() for k, b in self.model.named_buffers()}
        with _same_rng(x.device):
            return functional_call(
                self.model, {**(params or {}), **buffers}, (x,), {"upto": self.current_task + 1}
            )

    def virtual_parameters(self, batch: Batch, task: Task) -> dict[str, Tensor]:
        """``theta_v = theta - lr * grad L(f_theta(B))`` for the parameters the task's optimiser
        updates (Sec. 3.1), as new tensors: the model, its ``.grad`` and the optimiser are
        left as they are."""
        assert self.model is not None
        names = {id(p): n for n, p in self.model.named_parameters()}
        params = [p for p in self.trainable_parameters(task) if p.requires_grad]  # the optimiser's
        logits = self._forward(batch.x)
        loss = self.cross_entropy(logits, batch, task)  # L(f_theta(B)), the incoming batch
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        lr = self.virtual_lr()
        return {
            names[id(p)]: (p if g is None else p - lr * g).detach()
            for p, g in zip(params, grads, strict=True)
        }

    @torch.no_grad()
    def interference(self, memory: dict[str, Tensor], virtual: dict[str, Tensor]) -> Tensor:
        """``s(x) = l(f_theta_v(x), y) - l(f_theta(x), y)`` of every candidate (Sec. 3.1)."""
        x, y, t = memory["x"], memory["y"], memory["task_ids"]
        before = self.per_sample_loss(self._forward(x), y, t)
        after = self.per_sample_loss(self._forward(x, virtual), y, t)
        return after - before

    def retrieve(self, batch: Batch, task: Task) -> dict[str, Tensor]:
        """The ``k`` most interfered of ``candidates`` samples drawn from the memory."""
        device, k = batch.x.device, self.memory_batch_size(batch)
        pool = self.buffer.sample(self.candidates)
        pool = {name: v.to(device) for name, v in pool.items()}
        if len(pool["y"]) <= k:  # every candidate is replayed: nothing to score
            return pool
        scores = self.interference(pool, self.virtual_parameters(batch, task))
        keep = top_interfered(scores, k)
        return {name: v[keep] for name, v in pool.items()}

    def loss(self, batch: Batch, task: Task) -> Tensor:
        batch.memo = {}  # the stream samples enter the buffer after the step
        if not self.buffer.is_empty:
            batch = mixed_batch(batch, self.retrieve(batch, task))
        return super().loss(batch, task)
