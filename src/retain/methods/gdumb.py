"""GDumb: greedy class-balanced sampling, then training from scratch on the memory alone
(Prabhu, Torr & Dokania, "GDumb: A Simple Approach that Questions Our Progress in Continual
Learning", ECCV 2020)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.core.buffers import _Seeded
from retain.data.benchmark import Task
from retain.data.iterate import iterate_batches
from retain.methods.base import Batch, Method, TaskTrainer, procedure, register


class GreedyClassBalancedMemory(_Seeded):
    """GDumb's sampler (the paper's Algorithm 1) over a stream of labelled samples.

    With ``k`` slots, a sample of class ``y`` is stored if the memory is not full; else, if
    class ``y`` holds fewer samples than the largest class, a random sample of the largest
    class (the smallest class id among equally large ones) is evicted and its slot given to
    the new sample; else it is dropped. Only the largest class ever loses a sample, and the
    classes end within one sample of each other, except those that offered fewer samples than
    their share, which keep every one. (The paper writes the test as ``|M_y| < k / |Y|``; see
    docs/methods/gdumb.md for where the two differ.)

    Storage is preallocated on the first :meth:`add` (on the CPU), the random draws come from
    the memory's own generator (:class:`~retain.core.buffers.ReservoirBuffer`'s scheme), and
    :meth:`state_dict` holds everything, so a resumed run continues exactly.

    Args:
        size: memory slots ``k``.
        seed: seed of the generator; ``None`` draws one from torch's global generator on first
            use.
    """

    def __init__(self, size: int, seed: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"memory size must be at least 1, got {size}")
        super().__init__(seed)
        self.size = int(size)
        self.data: dict[str, Tensor] = {}
        #: class of every slot (-1: empty)
        self.classes = torch.full((self.size,), -1, dtype=torch.long)
        self._slots: dict[int, list[int]] = {}  # class -> its slots, sorted

    def __len__(self) -> int:
        return sum(len(s) for s in self._slots.values())

    @property
    def is_empty(self) -> bool:
        return len(self) == 0

    def counts(self) -> dict[int, int]:
        """Stored samples per class."""
        return {c: len(s) for c, s in sorted(self._slots.items()) if s}

    def add(self, x: Tensor, y: Tensor, task_ids: Tensor, classes: Tensor) -> Tensor:
        """Offer samples in stream order (``classes``: each one's class, e.g. its global label);
        returns the slot each one ended in (``-1``: dropped, or evicted by a later sample of
        the same call)."""
        tensors = {"x": x, "y": y, "task_ids": task_ids}
        n = len(classes)
        if any(len(v) != n for v in tensors.values()):
            raise ValueError("x, y, task_ids and classes given to add() must have the same length")
        if not self.data:
            self.data = {
                k: torch.zeros((self.size, *v.shape[1:]), dtype=v.dtype) for k, v in tensors.items()
            }
        source = torch.full((self.size,), -1, dtype=torch.long)  # offered item now in a slot
        for i, c in enumerate(classes.tolist()):
            slot = self._offer(int(c))
            if slot >= 0:
                source[slot] = i
        written = torch.nonzero(source >= 0).squeeze(1)
        items = source[written]
        for k, v in tensors.items():
            self.data[k][written] = v[items.to(v.device)].detach().to("cpu", self.data[k].dtype)
        out = torch.full((n,), -1, dtype=torch.long)
        out[items] = written
        return out

    def _offer(self, c: int) -> int:
        """Algorithm 1 for one sample of class ``c``: the slot it takes, or -1."""
        stored = len(self)
        own = self._slots.setdefault(c, [])
        if stored < self.size:  # not full: the next slot (slots are never freed)
            slot = stored
        else:
            largest = max(self._slots, key=lambda k: (len(self._slots[k]), -k))
            if len(own) >= len(self._slots[largest]):  # class c is (one of) the largest
                return -1
            victims = self._slots[largest]
            pick = int(torch.randint(len(victims), (), generator=self.generator))
            slot = victims.pop(pick)  # a random sample of the largest class is evicted
        bisect.insort(own, slot)
        self.classes[slot] = c
        return slot

    def get_all(self) -> dict[str, Tensor]:
        """Every stored sample, in slot order, with its ``"index"`` (slot) and ``"class"``."""
        filled = torch.nonzero(self.classes >= 0).squeeze(1)
        out = {k: v[filled] for k, v in self.data.items()}
        return {**out, "index": filled, "class": self.classes[filled]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "data": dict(self.data),
            "classes": self.classes.clone(),
            **self._generator_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != self.size:
            raise ValueError(f"memory of size {self.size} cannot load a state of {state['size']}")
        self.data = {k: v.clone() for k, v in state["data"].items()}
        self.classes = state["classes"].clone()
        self._slots = {}
        for slot, c in enumerate(self.classes.tolist()):  # slot order: the lists stay sorted
            if c >= 0:
                self._slots.setdefault(c, []).append(slot)
        self._load_generator_state(state)


class WarmRestartSchedule(torch.optim.lr_scheduler.LRScheduler):
    """GDumb's learning rate per epoch: one warm-up epoch at a tenth of ``lr``, then SGDR
    (Loshchilov & Hutter, ICLR 2017, Eq. 5) with the first period ``t0`` epochs and every
    next one ``t_mult`` times longer:

    ``lr_e = min_lr + (lr - min_lr) * (1 + cos(pi * T_cur / T_i)) / 2``,

    ``T_cur`` the epochs since the last restart (counted from epoch 1), ``T_i`` the current
    period. Equal to the official code's ``CosineAnnealingWarmRestarts(T_0=1, T_mult=2)``
    stepped once per epoch from epoch 2 on. Stepped by :meth:`Trainer.train_epochs` after every
    epoch; a pure function of the epoch, so its ``state_dict`` resumes it."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        min_lr: float,
        t0: int = 1,
        t_mult: int = 2,
        warmup: float = 0.1,
    ) -> None:
        self.min_lr, self.t0, self.t_mult, self.warmup = min_lr, t0, t_mult, warmup
        super().__init__(optimizer)

    def factor_lr(self, base: float, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (from 0) for a group whose ``lr`` is ``base``."""
        if epoch == 0:
            return base * self.warmup
        t_cur, period = epoch - 1, self.t0
        while t_cur >= period:
            t_cur -= period
            period *= self.t_mult
        # SGDR, Eq. 5
        return self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * t_cur / period)) / 2

    def get_lr(self) -> list[float]:
        return [self.factor_lr(base, self.last_epoch) for base in self.base_lrs]


def cutmix(x: Tensor, generator: torch.Generator, alpha: float) -> tuple[Tensor, Tensor, float]:
    """CutMix (Yun et al., ICCV 2019, Eq. 1): a box of every input replaced by the same box of
    another input of the batch. Returns the mixed inputs, the permutation that gave each row
    its partner and ``lam``, the share of each row left as it was (the box drawn with area
    ``1 - lam'``, ``lam' ~ Beta(alpha, alpha)``, clipped at the borders; ``lam`` the exact share
    after clipping, as the official code adjusts it). Images (``[N, C, H, W]``) get a box over
    ``H x W``; other inputs a segment of their last dimension."""
    dims = list(range(x.dim() - 2, x.dim())) if x.dim() >= 4 else [x.dim() - 1]
    centres = torch.rand(len(dims), generator=generator, dtype=torch.float64).tolist()
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):  # Beta draws from the global generator: seed it
        torch.manual_seed(seed)
        drawn = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    ratio = (1.0 - drawn) ** (1.0 / len(dims))  # side of the box relative to each dimension
    index: list[slice] = [slice(None)] * x.dim()
    area = 1.0
    for d, ud in zip(dims, centres, strict=True):
        size = x.shape[d]
        cut = int(size * ratio)
        centre = min(int(ud * size), size - 1)
        lo, hi = max(centre - cut // 2, 0), min(centre + cut // 2, size)
        index[d] = slice(lo, hi)
        area *= (hi - lo) / size
    mixed = x.clone()
    mixed[tuple(index)] = x[perm][tuple(index)]
    return mixed, perm, 1.0 - area


@register
class GDumb(Method):
    """GDumb: a class-balanced memory filled greedily from the stream, and a model trained
    from scratch on that memory alone after every task.

    Prabhu, Torr & Dokania, ECCV 2020. Every training sample of a task is offered to
    :class:`GreedyClassBalancedMemory` (Algorithm 1, ``memory_size`` slots); none is trained
    on directly. Then the model (backbone and every head) is reset to its state at ``setup``
    and trained on the memory only, over all classes seen so far (``loss_heads="seen"``), with
    the paper's recipe: SGD with momentum 0.9 and weight decay, one warm-up epoch at ``lr/10``
    then SGDR cosine warm restarts (:class:`WarmRestartSchedule`), CutMix with probability
    ``cutmix_prob`` and gradient-norm clipping. At inference the masking is the evaluation's:
    task-aware predictions are the task's head (its classes), task-agnostic ones all seen
    classes.

    Args:
        memory_size: memory slots ``k`` (the paper: 300 to 4400 on MNIST, 200 to 1000 on
            CIFAR10).
        epochs: epochs of every retraining on the memory. ``None`` (default): the run's
            ``epochs``, a CPU-sized reduction of the paper's 128 (MNIST) or 256 (CIFAR).
        batch_size: batch size of the retraining (the paper: 16); ``None``: the run's.
        lr: the largest learning rate of the schedule (the paper's ``maxlr``, 0.05).
        min_lr: its smallest (``minlr``, 0.0005).
        momentum: SGD momentum (0.9).
        weight_decay: SGD weight decay (1e-6).
        clip: the gradient norm of every step is clipped to this (10); 0 turns it off.
        cutmix_prob: probability of CutMix per batch (0.5 on CIFAR, SVHN, ImageNet; the
            paper's MNIST runs use none: 0).
        cutmix_alpha: CutMix's ``Beta(alpha, alpha)`` (1.0).
        seed: seed of the memory's generator (evictions, CutMix); ``None``: drawn from torch's
            global generator (seeded by the run).

    Deviations and choices: docs/methods/gdumb.md
    """

    name = "gdumb"
    own_procedure = True  # train_task: see retain.methods.base.procedure
    train_seen_heads = True
    data_parallel: ClassVar[bool] = False
    data_parallel_note: ClassVar[str] = "CutMix pairs rows of the whole batch, not of a shard"
    smoke_caps: ClassVar[dict[str, float]] = {"epochs": 1}

    def __init__(
        self,
        memory_size: int = 500,
        epochs: int | None = None,
        batch_size: int | None = 16,
        lr: float = 0.05,
        min_lr: float = 0.0005,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        clip: float = 10.0,
        cutmix_prob: float = 0.5,
        cutmix_alpha: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(loss_heads="seen")
        _check(memory_size >= 1, f"memory_size must be at least 1, got {memory_size}")
        _check(epochs is None or epochs >= 1, f"epochs must be at least 1 or None, got {epochs}")
        _check(
            batch_size is None or batch_size >= 1,
            f"batch_size must be at least 1 or None, got {batch_size}",
        )
        _check(lr > 0 and math.isfinite(lr), f"lr must be a positive number, got {lr}")
        _check(0 <= min_lr <= lr, f"min_lr must be in [0, lr], got {min_lr}")
        _check(momentum >= 0 and weight_decay >= 0, "momentum and weight_decay must be >= 0")
        _check(clip >= 0, f"clip must be >= 0 (0: no clipping), got {clip}")
        _check(0 <= cutmix_prob <= 1, f"cutmix_prob must be in [0, 1], got {cutmix_prob}")
        _check(cutmix_alpha > 0, f"cutmix_alpha must be positive, got {cutmix_alpha}")
        self.memory = GreedyClassBalancedMemory(memory_size, seed)
        self.epochs, self.batch_size = epochs, batch_size
        self.lr, self.min_lr, self.momentum, self.weight_decay = lr, min_lr, momentum, weight_decay
        self.clip, self.cutmix_prob, self.cutmix_alpha = clip, cutmix_prob, cutmix_alpha
        self._initial: dict[str, Tensor] = {}
        self._phase = "idle"  # idle | retrain (the memory holds the task, the model was reset)

    def setup(self, model, info) -> None:
        super().setup(model, info)
        # the state every retraining starts from (a resumed run loads the checkpoint's)
        self._initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    # ------------------------------------------------------------------ the procedure
    def offer(self, task: Task) -> None:
        """Offer every training sample of ``task`` to the memory, in the task's order."""
        tid = torch.full((len(task.y_train),), task.id, dtype=torch.long)
        self.memory.add(task.x_train, task.y_train, tid, task.y_train.cpu() + task.class_offset)

    def reset_model(self) -> None:
        """Backbone and every head back to their state at ``setup`` ("from scratch")."""
        assert self.model is not None
        self.model.load_state_dict(self._initial)

    @procedure
    def train_task(self, task: Task, trainer: TaskTrainer) -> None:
        if self._phase != "retrain":  # a resumed run may be inside the retraining already
            self.offer(task)
            self.reset_model()
            self._phase = "retrain"
        optimizer = torch.optim.SGD(
            [p for p in self.trainable_parameters(task) if p.requires_grad],
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )
        schedule = WarmRestartSchedule(optimizer, self.min_lr)
        epochs = trainer.config.epochs if self.epochs is None else self.epochs
        trainer.train_epochs(task, epochs, optimizer=optimizer, scheduler=schedule)

    def after_task(self, task: Task) -> None:
        self._phase = "idle"

    def batches(self, task: Task, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch over the memory, shuffled by the run's generator."""
        self.require_procedure()  # a plain loop would draw from an empty memory
        stored = self.memory.get_all()
        size = self.batch_size or batch_size
        data = (stored["x"], stored["y"], stored["task_ids"])
        of = -(-len(stored["y"]) // size)
        for i, (x, y, t) in enumerate(iterate_batches(data, size, generator=generator)):
            yield Batch(x, y, t, None, i, of)

    def loss(self, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        self.require_procedure()
        target = self.model.global_labels(batch.y, batch.task_ids)
        upto = self.current_task + 1
        g = self.memory.generator
        if self.cutmix_prob > 0 and float(torch.rand((), generator=g)) < self.cutmix_prob:
            x, perm, lam = cutmix(batch.x, g, self.cutmix_alpha)
            logits = self.model(x, upto=upto)
            return lam * F.cross_entropy(logits, target) + (1 - lam) * F.cross_entropy(
                logits, target[perm]
            )
        return F.cross_entropy(self.model(batch.x, upto=upto), target)

    def after_backward(self, batch: Batch, task: Task) -> None:
        if self.clip > 0:
            nn.utils.clip_grad_norm_(self.trainable_parameters(task), self.clip)

    # ------------------------------------------------------------------ state
    def extra_metrics(self) -> dict[str, Any]:
        return {"memory_per_class": {str(c): n for c, n in self.memory.counts().items()}}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "memory": self.memory.state_dict(),
            "initial": dict(self._initial),
            "phase": self._phase,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
        self._initial = {k: v.clone() for k, v in state["initial"].items()}
        self._phase = state["phase"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
