"""eXtended Dark Experience Replay (X-DER): DER++ whose memory is rewritten and whose future
heads are prepared before their classes arrive."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.core.buffers import ClassBalancedBuffer, ReservoirBuffer
from retain.core.distill import logit_mse
from retain.data.augment import random_crop, random_hflip
from retain.data.benchmark import Task
from retain.methods._replay import ReplayMethod
from retain.methods.base import Batch, register


def rescale_block(block: Tensor, gt: Tensor, gamma: float) -> Tensor:
    """X-DER's logit rescaling (the paper's memory-update rule, "rewriting the past"): a block of
    logits ``block`` (``[n, k]``) that is to be stored for samples whose true-class logit is
    ``gt`` (``[n]``) is scaled, where its maximum exceeds ``gt``, by ``gamma * gt / max`` so
    that its maximum becomes ``gamma * gt < gt``: the true class stays the largest stored
    logit, by a margin of ``(1 - gamma) * gt``. Rows whose maximum is at most ``gt`` are kept.

    For ``gt <= 0`` the paper's factor would flip signs (or divide by zero); such rows are
    shifted instead, so that their maximum becomes ``gt - (1 - gamma)`` (retain's choice)."""
    top = block.max(dim=1).values
    over = top > gt
    scaled = block * (gamma * gt / torch.where(top == 0, torch.ones_like(top), top))[:, None]
    shifted = block + (gt - (1.0 - gamma) - top)[:, None]
    out = torch.where((gt > 0)[:, None], scaled, shifted)
    return torch.where(over[:, None], out, block)


def supcon_loss(features: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, Eq. 2, ``L^sup_out``) of ``features``
    ``[n, views, d]`` (L2-normalised here) with one label per sample: for every anchor view,
    ``-mean_{p in P(i)} log(exp(s_ip / tau) / sum_{a != i} exp(s_ia / tau))``, ``P(i)`` the other
    views of the same label; the mean over anchors."""
    n, v, _ = features.shape
    f = F.normalize(features, dim=-1).reshape(n * v, -1)
    lab = labels.repeat_interleave(v)
    sim = f @ f.t() / temperature
    self_mask = torch.eye(n * v, dtype=torch.bool, device=f.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (lab[:, None] == lab[None, :]) & ~self_mask
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)) / pos.sum(1).clamp_min(1)
    return per_anchor.mean()


def augment_views(x: Tensor, views: int, generator: torch.Generator) -> Tensor:
    """``views`` augmented copies of every sample (``[n * views, ...]``, copies of a sample
    adjacent): images get a random crop (zero padding of an eighth of the side) and a
    horizontal flip; flat inputs an additive Gaussian jitter of 0.1 (retain's choice where no
    image transform applies)."""
    rep = x.repeat_interleave(views, 0)
    if rep.ndim == 4:
        pad = max(1, rep.shape[-1] // 8)
        cpu = random_hflip(random_crop(rep.cpu(), pad, generator), generator)
        return cpu.to(x.device)
    noise = torch.randn(rep.shape, generator=generator, dtype=rep.dtype).to(x.device)
    return rep + 0.1 * noise


def first_occurrences(index: Tensor) -> Tensor:
    """Bool mask of the positions in ``index`` that hold a value's first occurrence."""
    pos = torch.arange(len(index), device=index.device)
    uniq, inv = torch.unique(index, return_inverse=True)
    first = torch.full((len(uniq),), len(index), dtype=torch.long, device=index.device)
    first.scatter_reduce_(0, inv, pos, reduce="amin")
    return first[inv] == pos


@register
class XDER(ReplayMethod):
    """X-DER: DER++ with a rewritten memory, prepared future heads and a balanced buffer.

    Boschini, Bonicelli, Buzzega, Porrello & Calderara, "Class-Incremental Continual Learning
    into the eXtended DER-verse", TPAMI 2022. On top of DER++'s objective (``CE + alpha * MSE of
    stored logits + beta * CE of replayed labels``) every part below can be turned off:

    * ``past_update`` ("rewriting the past", the memory update): when task ``t`` ends, the
      stored logits of the buffer samples of tasks ``< t`` get their entries of task ``t``'s
      classes replaced by the current network's outputs (``future_update``: also the entries
      of the future heads, as the official code does), rescaled by :func:`rescale_block`.
    * ``rescale`` (the memory update's rescaling): the transplanted logits, and the past
      heads' logits of the samples a task inserts, are scaled by ``gamma * gt / max`` where
      they exceed the true class's logit ``gt``, so the stored maximum stays the true class.
    * ``future_preparation`` ("preparing the future"): a supervised contrastive loss (weight
      ``lambd``, temperature ``temperature``) on the logits of every future head, over
      ``views`` augmentations of the stream batch and ``contrast_size`` buffer samples.
    * ``future_constraint`` / ``past_constraint`` (the logit constraints): hinges of weight
      ``eta`` and margin ``m``: the largest future logit stays ``m`` below the largest logit
      of the sample's own head; the current head's best softmax probability stays ``m``
      above the past heads' best (stream samples; off by default, as in the official code).
    * ``present_head`` (separate cross-entropies, against the bias towards new classes): the
      stream's CE sees the current task's head only, and the replayed CE the past heads only
      (``False``: DER++'s CE over every head seen so far).
    * ``balanced`` (the class-balanced memory): the buffer is filled at the end of each task,
      class-balanced (:class:`~retain.core.buffers.ClassBalancedBuffer`), with the logits of
      the trained network (``False``: DER++'s reservoir from the stream, logits at insertion).

    With every part off X-DER is DER++ (tests/test_xder.py checks the loss on one batch).
    The parts are cited by the paper's names for them, not by equation number (see the docs
    page); what each computes follows the paper and the official code (Mammoth).

    Args:
        memory_size: buffer slots.
        alpha: weight of the logit MSE on replayed samples (DER's term).
        beta: weight of the cross-entropy on replayed labels (DER++'s term).
        gamma: rescaling factor of stored logits (0 < gamma <= 1; official default 0.85).
        lambd: weight of the future-preparation contrastive loss.
        temperature: temperature of the contrastive loss (official default 5).
        views: augmented views per sample in the contrastive loss (official default 4).
        contrast_size: buffer samples added to the stream batch in the contrastive loss.
        eta: weight of the future and past constraints.
        m: margin of the future and past constraints.
        past_update: rewrite the stored logits at the end of every task.
        online_update: also rewrite them while a task trains, for replayed samples of past
            tasks (the official code's in-task update; each with probability 1 / the times it
            was replayed in the task).
        future_update: the past update also rewrites the future heads' entries.
        rescale: rescale transplanted and inserted past-head logits (``gamma``).
        future_preparation: train the future heads with the contrastive loss.
        future_constraint: the future-logit hinge.
        past_constraint: the past-probability hinge on stream samples.
        present_head: cross-entropies on the present (stream) and past (replay) heads only.
        balanced: class-balanced buffer filled at task ends (else reservoir from the stream).
        minibatch_size: memory samples per term and step (default: the stream batch's size).
        loss_heads: ``"seen"`` (default, class-incremental) or ``"task"``.

    Deviations and choices: docs/methods/xder.md
    """

    name = "xder"

    def __init__(
        self,
        memory_size: int = 200,
        alpha: float = 0.3,
        beta: float = 0.8,
        gamma: float = 0.85,
        lambd: float = 0.05,
        temperature: float = 5.0,
        views: int = 2,
        contrast_size: int = 64,
        eta: float = 0.1,
        m: float = 0.3,
        past_update: bool = True,
        online_update: bool = True,
        future_update: bool = True,
        rescale: bool = True,
        future_preparation: bool = True,
        future_constraint: bool = True,
        past_constraint: bool = False,
        present_head: bool = True,
        balanced: bool = True,
        minibatch_size: int | None = None,
        loss_heads: str = "seen",
    ) -> None:
        super().__init__(memory_size, minibatch_size, loss_heads)
        if min(alpha, beta, lambd, eta, m) < 0:
            raise ValueError("alpha, beta, lambd, eta and m must be >= 0")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if views < 2 or contrast_size < 0:
            raise ValueError("views must be >= 2 and contrast_size >= 0")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.lambd, self.temperature, self.eta, self.m = (
            float(lambd),
            float(temperature),
            float(eta),
            float(m),
        )
        self.views, self.contrast_size = int(views), int(contrast_size)
        self.past_update, self.future_update, self.rescale = past_update, future_update, rescale
        self.online_update = online_update
        #: times each slot was replayed in the current task (the online update's odds)
        self.replayed = torch.zeros(memory_size)
        self.future_preparation = future_preparation
        self.future_constraint, self.past_constraint = future_constraint, past_constraint
        self.present_head, self.balanced = present_head, balanced
        self.buffer: ReservoirBuffer = (
            ClassBalancedBuffer(memory_size) if balanced else ReservoirBuffer(memory_size)
        )

    # ------------------------------------------------------------------ head geometry
    def _offsets(self) -> list[int]:
        assert self.model is not None
        cpt = self.model.classes_per_task
        return [sum(cpt[:i]) for i in range(len(cpt) + 1)]

    def _prepares_future(self) -> bool:
        assert self.model is not None
        return (
            (self.future_preparation or self.future_constraint)
            and not self.model.shared_head
            and self.current_task < self.model.n_tasks - 1
        )

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        """The backbone and the heads seen so far, and the future heads when they are
        prepared (the contrastive loss and the future constraint train them)."""
        assert self.model is not None
        if not self._prepares_future():
            return super().trainable_parameters(task)
        heads = list(range(self.model.n_tasks))
        return list(self.model.backbone.parameters()) + self.model.head_parameters(heads)

    # ------------------------------------------------------------------ objective
    def loss(self, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        n, mb = len(batch), self.memory_batch_size(batch)
        mems = []
        if not self.buffer.is_empty:
            mems.append(self.buffer.sample(mb))
            if self.beta > 0:
                mems.append(self.buffer.sample(mb))
        dev = batch.x.device
        mems = [{k: v.to(dev) for k, v in mm.items()} for mm in mems]  # the buffer is on CPU
        x = torch.cat([batch.x, *(mm["x"] for mm in mems)]) if mems else batch.x
        full = self.model(x)  # every head
        z = full[:n]
        loss = self._stream_ce(z, batch, task)
        if not self.balanced:
            batch.memo = {"logits": z.detach()}  # DER++'s reservoir admission after the step
        if mems:
            loss = loss + self._replay_terms(full[n:], mems, task)
            if self.online_update and self.current_task > 0 and not self.model.shared_head:
                self._update_online(full[n:].detach(), mems)
        if self._prepares_future():
            loss = loss + self._future_terms(batch, z, full[n:], mems)
        if self.past_constraint and self.current_task > 0 and not self.model.shared_head:
            loss = loss + self._past_constraint(z)
        return loss

    def _stream_ce(self, z: Tensor, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        off = self._offsets()
        t = self.current_task
        if self.model.shared_head:
            return self.cross_entropy(z, batch, task)
        if self.present_head and batch.task == t:
            return F.cross_entropy(z[:, off[t] : off[t + 1]], batch.y)  # present head only
        return self.cross_entropy(z[:, : off[t + 1]], batch, task)  # DER++: every head seen

    def _replay_terms(self, zm_all: Tensor, mems: list[dict[str, Tensor]], task: Task) -> Tensor:
        assert self.model is not None
        m1 = mems[0]
        k = len(m1["y"])
        mask = None
        if self.loss_heads == "task" and not self.model.shared_head:
            mask = self.model.own_task_mask(m1["task_ids"], self.model.n_tasks)
        loss = self.alpha * logit_mse(zm_all[:k], m1["logits"], mask)  # DER's alpha term
        if self.beta > 0:
            m2 = mems[1]
            z2 = zm_all[k:]
            replay = Batch(m2["x"], m2["y"], m2["task_ids"])
            if self.model.shared_head:
                return loss + self.beta * self.cross_entropy(z2, replay, task)
            off = self._offsets()
            t = self.current_task
            past = m2["task_ids"] < t
            if self.present_head and self.loss_heads == "seen" and t > 0 and bool(past.all()):
                target = self.model.global_labels(m2["y"], m2["task_ids"])
                ce = F.cross_entropy(z2[:, : off[t]], target)  # past heads only
            else:
                ce = self.cross_entropy(z2[:, : off[t + 1]], replay, task)  # DER++'s beta term
            loss = loss + self.beta * ce
        return loss

    def _future_terms(
        self, batch: Batch, z: Tensor, zm_all: Tensor, mems: list[dict[str, Tensor]]
    ) -> Tensor:
        assert self.model is not None
        off = self._offsets()
        t = self.current_task
        loss = z.new_zeros(())
        if self.future_preparation and self.lambd > 0:
            loss = loss + self.lambd * self._contrastive(batch, off)
        if self.future_constraint and self.eta > 0:
            own_lo = torch.tensor(off[:-1], device=z.device)
            rows, tids = [z], [batch.task_ids.to(z.device)]
            if mems:
                index = torch.cat([mm["index"] for mm in mems])
                keep = first_occurrences(index).to(z.device)  # each buffer sample once
                rows.append(zm_all[keep])
                tids.append(torch.cat([mm["task_ids"] for mm in mems]).to(z.device)[keep])
            logits, task_of = torch.cat(rows), torch.cat(tids)
            cols = torch.arange(logits.shape[1], device=z.device)
            lo = own_lo[task_of]
            hi = torch.tensor(off[1:], device=z.device)[task_of]
            own = (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None])
            good = logits.masked_fill(~own, float("-inf")).max(1).values
            bad = logits[:, off[t + 1] :].max(1).values
            hinge = bad + self.m - good  # future constraint: max future <= max own - m
            loss = loss + self.eta * _mean_positive(hinge)
        return loss

    def _contrastive(self, batch: Batch, off: list[int]) -> Tensor:
        """Future preparation: SupCon on each future head's logits over augmented views."""
        assert self.model is not None
        t = self.current_task
        x = batch.x
        labels = self.model.global_labels(batch.y, batch.task_ids)
        if not self.buffer.is_empty and self.contrast_size > 0:
            extra = {k: v.to(x.device) for k, v in self.buffer.sample(self.contrast_size).items()}
            x = torch.cat([extra["x"], x])
            buf_labels = self.model.global_labels(extra["y"], extra["task_ids"])
            labels = torch.cat([buf_labels, labels])
        views = augment_views(x, self.views, self.buffer.generator)
        out = self.model(views).reshape(len(x), self.views, -1)
        heads = range(t + 1, self.model.n_tasks)
        terms = [
            supcon_loss(out[:, :, off[h] : off[h + 1]], labels, self.temperature) for h in heads
        ]
        return torch.stack(terms).mean()

    def _past_constraint(self, z: Tensor) -> Tensor:
        """Past constraint on stream samples: the current head's best softmax probability stays
        ``m`` above the past heads' best (the latter detached)."""
        off = self._offsets()
        t = self.current_task
        prob = F.softmax(z[:, : off[t + 1]], dim=1)
        good = prob[:, off[t] : off[t + 1]].max(1).values
        bad = prob[:, : off[t]].max(1).values.detach()
        return self.eta * _mean_positive(bad + self.m - good)

    # ------------------------------------------------------------------ memory
    def after_step(self, batch: Batch, task: Task) -> None:
        if not self.balanced:
            super().after_step(batch, task)

    @torch.no_grad()
    def _update_online(self, zm_all: Tensor, mems: list[dict[str, Tensor]]) -> None:
        """The in-task memory update (official code): replayed samples of past tasks (each
        once) get their entries of the current and future heads from this step's outputs,
        rescaled, each with probability ``1 / (times replayed in this task)``."""
        assert self.model is not None
        index = torch.cat([mm["index"] for mm in mems]).cpu()
        keep = first_occurrences(index)
        tids = torch.cat([mm["task_ids"] for mm in mems]).cpu()
        keep &= tids < self.current_task
        if not bool(keep.any()):
            return
        index, out = index[keep], zm_all.cpu()[keep]
        self.replayed[index] += 1
        draw = torch.rand(len(index), generator=self.buffer.generator)
        pick = draw * self.replayed[index] < 1
        if not bool(pick.any()):
            return
        index, out = index[pick], out[pick]
        off = self._offsets()
        t = self.current_task
        logits = self.buffer.data["logits"][index].clone()
        end = off[-1] if self.future_update else off[t + 1]
        block = out[:, off[t] : end]
        if self.rescale:
            gcol = self.model.global_labels(
                self.buffer.data["y"][index], self.buffer.data["task_ids"][index]
            )
            block = rescale_block(block, logits[torch.arange(len(index)), gcol], self.gamma)
        logits[:, off[t] : end] = block
        self.buffer.update(index, logits=logits)

    def after_task(self, task: Task) -> None:
        assert self.model is not None
        if self.balanced:
            self._insert(task)
        if self.past_update and not self.model.shared_head and task.id > 0:
            self._update_past(task.id)
        self.replayed.zero_()  # the online update's odds restart with every task

    @torch.no_grad()
    def _outputs(self, x: Tensor) -> Tensor:
        """Every head's logits of ``x`` in eval mode, in chunks (the mode is restored)."""
        assert self.model is not None
        was = self.model.training
        self.model.eval()
        try:
            dev = next(self.model.parameters()).device
            out = [self.model(x[i : i + 256].to(dev)).cpu() for i in range(0, len(x), 256)]
        finally:
            self.model.train(was)
        return torch.cat(out)

    def _insert(self, task: Task) -> None:
        """Balanced insertion: the finished task's classes take their share of the slots, with
        the trained network's logits; their past heads rescaled (``rescale``)."""
        assert self.model is not None and isinstance(self.buffer, ClassBalancedBuffer)
        y = task.y_train.cpu()
        tid = torch.full((len(y),), task.id, dtype=torch.long)
        groups = self._offsets()[task.id] + y  # global classes (also with a shared head)
        pick, slots = self.buffer.rebalance(groups)
        if len(pick) == 0:
            return
        x = task.x_train.cpu()[pick]
        logits = self._outputs(x)
        if self.rescale and task.id > 0 and not self.model.shared_head:
            off = self._offsets()
            gt = logits[torch.arange(len(pick)), groups[pick]]
            logits[:, : off[task.id]] = rescale_block(logits[:, : off[task.id]], gt, self.gamma)
        self.buffer.write(slots, x=x, y=y[pick], task_ids=tid[pick], logits=logits)

    def _update_past(self, t: int) -> None:
        """Past update: the entries of task ``t``'s classes (and of the future heads with
        ``future_update``) of the stored logits of samples of tasks ``< t``."""
        assert self.model is not None
        stored = self.buffer.get_all()
        old = stored["task_ids"] < t
        if not bool(old.any()):
            return
        index = stored["index"][old]
        logits = stored["logits"][old].clone()
        off = self._offsets()
        end = off[-1] if self.future_update else off[t + 1]
        block = self._outputs(stored["x"][old])[:, off[t] : end]
        if self.rescale:
            gt_col = self.model.global_labels(stored["y"][old], stored["task_ids"][old])
            gt = logits[torch.arange(len(index)), gt_col]
            block = rescale_block(block, gt, self.gamma)
        logits[:, off[t] : end] = block
        self.buffer.update(index, logits=logits)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "balanced": self.balanced,
            "replayed": self.replayed.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if bool(state.get("balanced", self.balanced)) != self.balanced:
            raise ValueError("xder state saved with a different 'balanced' setting")
        super().load_state_dict(state)
        self.replayed = state["replayed"].clone()


def _mean_positive(hinge: Tensor) -> Tensor:
    """Mean of the positive entries of ``hinge`` (0 when none is): the official code's
    reduction of the constraint hinges (only violating samples count)."""
    pos = hinge > 0
    return hinge.clamp_min(0).sum() / pos.sum().clamp_min(1)
