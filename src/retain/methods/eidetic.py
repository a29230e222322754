"""Eidetic Learning (Dronen & Balestriero, 2025): networks that provably cannot forget.

Each task prunes its excess neurons, freezes the rest and leaves the pruned ones to later
tasks; a learned task router removes the need for a task id (:class:`Eidetic`). The neuron
machinery (groups, ownership, guards, scores) is :mod:`retain.core.structured`. Deviations
and choices: docs/methods/eidetic.md.

Engine use: ``retain run --method eidetic`` (``epochs`` is the maximum number of pre-training
epochs per task). Own loop, in the spirit of the paper's Listing 1::

    model = ContinualModel(my_backbone, classes_per_task)      # one head per task
    eid = Eidetic(pruning="l2", step=0.05, tolerance=0.01)
    eid.setup(model)                                           # traces the neuron graph
    for t, (x, y) in enumerate(task_data):
        eid.prepare_for_task(t)
        opt = torch.optim.AdamW(eid.task_parameters(t), lr=1e-3, weight_decay=1e-2)
        eid.fit_task((x, y), opt, batch_size=256, max_epochs=50)
        eid.finish_task(t)
    eid.train_router(task_data, torch.optim.Adam(eid.router_parameters(), 1e-3))
    print(eid.format_capacity())
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.core.neuron_graph import NeuronGraph, trace
from retain.core.structured import (
    FREE,
    BatchNormGuard,
    NeuronMasks,
    ParamGuard,
    TaylorScores,
    format_capacity,
    lp_scores,
    select_global,
    select_per_group,
)
from retain.data.benchmark import Task
from retain.data.iterate import iterate_batches
from retain.methods.base import (
    Batch,
    BenchmarkInfo,
    Method,
    TaskTrainer,
    procedure,
    register,
)

if TYPE_CHECKING:
    from retain.models.continual import ContinualModel

PRUNINGS = ("l1", "l2", "taylor")
Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]


@register
class Eidetic(Method):
    """Eidetic Learning: iterative structured pruning, frozen neurons, recycling, task router.

    Dronen & Balestriero, "Eidetic Learning: an Efficient and Provable Solution to
    Catastrophic Forgetting", 2025 (Sec. 3, steps I-VI). For task ``t``:

    * I: train to convergence (early stopping on training accuracy), then prune neurons (rows,
      channels) step by step, recovering after each step, until training accuracy falls below
      the tolerance; the iteration before is restored;
    * II, persistence: the surviving free neurons become ``t``'s own and are frozen, their
      BatchNorm channels too (Eq. 2: statistics kept, eval behaviour in later tasks);
    * III-IV, recycling: the pruned neurons are re-initialised for the next task;
    * V, resistance: their synapses into ``t``'s neurons stay deleted (Eq. 1 for linear and
      conv layers, Eq. 3 for residual blocks, whose added outputs share one neuron group).

    After the last task a router on the penultimate features picks each input's task head, so
    prediction needs no task id and one pass of the body.

    Args:
        pruning: neuron score: ``"l1"``/``"l2"`` (norm of the incoming weights; the same
            fraction pruned in every layer) or ``"taylor"`` (Molchanov et al. 2017; one global
            threshold over all layers).
        step: pruning step (fraction, see ``step_base``; for Taylor, of the available neurons).
        tolerance: stop threshold. Pruning stops once training accuracy falls below
            ``best * (1 - tolerance)`` (or ``best - tolerance`` with ``absolute_tolerance``);
            the iteration before is restored.
        absolute_tolerance: read ``tolerance`` as accuracy points instead of a fraction.
        patience: early stopping of pre-training: stop when accuracy reached 1.0 or has not
            improved for more than ``patience`` epochs (the engine's ``epochs`` caps it).
        max_recovery_epochs: at most this many epochs after each pruning step; recovery ends as
            soon as accuracy is within the tolerance.
        max_pruned: stop once more than this fraction of all neurons is pruned in the current
            task, going back to the state before the pruning step that crossed it.
        step_base: ``"unmasked"`` (``round(step x neurons not yet pruned in this task, frozen
            ones included)`` per layer, clamped to the free ones) or ``"free"``
            (``round(step x free unpruned neurons)``).
        lr_divisor: divide the learning rate by this before the extra epoch that ends
            pre-training (the paper halves it on PMNIST: 2.0).
        macro_accuracy: drive early stopping and the stop rule with macro-averaged training
            accuracy (default); else plain accuracy.
        prune_last: prune the last task? ``"auto"`` (default): only when a router is trained
            (the router phase is then the last, unpruned phase).
        route: after the last task, train a task classifier on the penultimate features and
            predict task-agnostically by routing (before it exists: argmax over all heads).
        router_epochs: maximum epochs of the router phase (default: the engine's ``epochs``).
        router_samples_per_task: train the router on this many samples of each task (a fixed
            random subset; ``None``: all, as the paper).
        taylor_normalize: ``"global"`` (one L2 norm over all scores) or ``"layer"``
            (Molchanov's per-layer normalisation).
        taylor_constant_step: Taylor prunes ``step x all neurons`` per iteration instead of
            ``step x available neurons``.
        graph: a :class:`~retain.core.neuron_graph.NeuronGraph` of the backbone (module names
            relative to ``model.backbone``); default: derived by tracing.

    Deviations and choices: docs/methods/eidetic.md
    """

    name = "eidetic"
    own_procedure = True  # train_task: see retain.methods.base.procedure
    task_agnostic = True
    #: ``--smoke``: one patience step and recovery epoch, big pruning steps (few rounds)
    smoke_caps: ClassVar[dict[str, float]] = {"patience": 1, "max_recovery_epochs": 1}
    smoke_floors: ClassVar[dict[str, float]] = {"step": 0.3}
    data_parallel = False
    data_parallel_note = "it trains with a prune-and-recover loop of its own"

    def __init__(
        self,
        pruning: str = "l2",
        step: float = 0.05,
        tolerance: float = 0.01,
        absolute_tolerance: bool = False,
        patience: int = 5,
        max_recovery_epochs: int = 5,
        max_pruned: float = 0.95,
        step_base: str = "unmasked",
        lr_divisor: float = 1.0,
        macro_accuracy: bool = True,
        prune_last: bool | str = "auto",
        route: bool = True,
        router_epochs: int | None = None,
        router_samples_per_task: int | None = None,
        taylor_normalize: str = "global",
        taylor_constant_step: bool = False,
        graph: NeuronGraph | None = None,
    ) -> None:
        super().__init__(loss_heads="task")
        if pruning not in PRUNINGS:
            raise ValueError(f"pruning must be one of {', '.join(PRUNINGS)}, got {pruning!r}")
        if not 0 < step <= 1:
            raise ValueError(f"step must be in (0, 1], got {step}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        if max_recovery_epochs < 1 or patience < 0:
            raise ValueError("max_recovery_epochs must be >= 1 and patience >= 0")
        if step_base not in ("unmasked", "free"):
            raise ValueError(f"step_base must be 'unmasked' or 'free', got {step_base!r}")
        if taylor_normalize not in ("global", "layer"):
            raise ValueError(f"taylor_normalize must be 'global' or 'layer'; {taylor_normalize!r}")
        if prune_last not in ("auto", True, False):
            raise ValueError(f"prune_last must be 'auto', true or false, got {prune_last!r}")
        if lr_divisor <= 0:
            raise ValueError(f"lr_divisor must be positive, got {lr_divisor}")
        self.pruning = pruning
        self.step = step
        self.tolerance = tolerance
        self.absolute_tolerance = absolute_tolerance
        self.patience = patience
        self.max_recovery_epochs = max_recovery_epochs
        self.max_pruned = max_pruned
        self.step_base = step_base
        self.lr_divisor = lr_divisor
        self.macro_accuracy = macro_accuracy
        self.prune_last = prune_last
        self.route = route
        self.router_epochs = router_epochs
        self.router_samples_per_task = router_samples_per_task
        self.taylor_normalize = taylor_normalize
        self.taylor_constant_step = taylor_constant_step
        self.user_graph = graph

        self.masks: NeuronMasks | None = None
        self.guard: ParamGuard | None = None
        self.bn_guard: BatchNormGuard | None = None
        self.taylor: TaylorScores | None = None
        self.router: nn.Linear | None = None
        self.router_trained = False
        self.finished = -1  # last task whose neurons were claimed
        self.phase = -1  # owner id of the phase being trained (a task id, or n_tasks: router)
        self.history: list[dict[str, Any]] = []
        self.router_accuracy: dict[str, float] = {}

    # ================================================================== setup and ownership
    def setup(self, model: ContinualModel, info: BenchmarkInfo | None = None) -> None:
        super().setup(model, info)
        if model.shared_head:
            raise ValueError("eidetic needs one head per task (head='task'), not a shared head")
        if self.bn_guard is not None:
            self.bn_guard.remove()
        graph = self.user_graph if self.user_graph is not None else trace(model.backbone)
        self.graph = graph
        self.masks = NeuronMasks(graph, model.backbone)
        feat = self.masks.sizes[self.masks.features] * graph.features_expand
        if feat != model.heads[0].in_features:
            raise ValueError(f"the heads read {model.heads[0].in_features} features, not {feat}")
        self.guard = ParamGuard(self.masks)
        self.bn_guard = BatchNormGuard(self.masks)
        self.taylor = TaylorScores(self.masks)
        head = model.heads[0]
        self.router = nn.Linear(head.in_features, model.n_tasks).to(head.weight.device)
        self.router_trained = False
        self.finished = -1
        self.phase = -1
        self.history = []
        self.router_accuracy = {}

    @property
    def n_tasks(self) -> int:
        assert self.model is not None
        return self.model.n_tasks

    def _require(self) -> tuple[ContinualModel, NeuronMasks, ParamGuard]:
        if self.model is None or self.masks is None or self.guard is None:
            raise RuntimeError("call setup(model) first")
        return self.model, self.masks, self.guard

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self.prepare_for_task(task.id)

    def prepare_for_task(self, task_id: int) -> None:
        """Recycle the free neurons and freeze everything earlier tasks own (Listing 1's
        ``prepare_for_task``). ``task_id == n_tasks`` prepares the router phase."""
        model, masks, _ = self._require()
        if task_id < model.n_tasks:
            self.current_task = task_id
        self.phase = task_id
        if self.finished < task_id - 1:
            # an earlier task was never finished (own loop without finish_task): claim it now
            self.finish_task(task_id - 1)
        for g in masks.groups:
            masks.pruned[g].zero_()
        if self.finished >= 0:
            masks.recycle_()
        if self.taylor is not None:
            self.taylor.reset()
        self._refresh(keep_saved=False)

    def _refresh(self, keep_saved: bool = True) -> None:
        model, masks, guard = self._require()
        phase = self.phase
        whole = [p for t in range(min(phase, model.n_tasks)) for p in model.heads[t].parameters()]
        if phase >= model.n_tasks:  # router phase: every task head is final
            whole = [p for h in model.heads for p in h.parameters()]
        readers = []
        if 0 <= phase < model.n_tasks:
            readers.append((model.heads[phase].weight, masks.features, self.graph.features_expand))
        elif self.router is not None:
            readers.append((self.router.weight, masks.features, self.graph.features_expand))
        guard.refresh(whole=whole, readers=readers, keep_saved=keep_saved)
        guard.restore()  # pruned rows and the columns reading them are zero from now on
        if self.bn_guard is not None and not keep_saved:
            self.bn_guard.refresh()

    def finish_task(self, task_id: int) -> dict[str, int]:
        """The task's free, unpruned neurons become its own (frozen from now on); its pruned
        neurons are free again (re-initialised by the next :meth:`prepare_for_task`)."""
        _, masks, _ = self._require()
        if task_id <= self.finished:
            return {}
        got = masks.claim(task_id)
        self.finished = task_id
        return got

    def after_task(self, task: Task) -> None:
        self.finish_task(task.id)

    def task_parameters(self, task_id: int) -> list[nn.Parameter]:
        """What the optimiser of ``task_id`` should update: the backbone and that task's head
        (frozen entries are kept exact by the hooks anyway)."""
        model, _, _ = self._require()
        return list(model.backbone.parameters()) + list(model.heads[task_id].parameters())

    def router_parameters(self) -> list[nn.Parameter]:
        model, _, _ = self._require()
        assert self.router is not None
        return list(model.backbone.parameters()) + list(self.router.parameters())

    # ================================================================== training hooks
    def after_backward(self, batch: Batch, task: Task) -> None:
        if self.guard is not None:
            self.guard.mask_grads()

    def after_step(self, batch: Batch, task: Task) -> None:
        if self.guard is not None:
            self.guard.restore()

    # ================================================================== pruning building blocks
    def prune_step(self, data: Iterable[tuple[Tensor, Tensor]] | None = None) -> int:
        """One pruning iteration of the current task; returns the number of neurons pruned.
        Taylor pruning needs ``data`` (the task's training batches) for its scores."""
        _, masks, _ = self._require()
        if self.pruning == "taylor":
            if data is None:
                raise ValueError("Taylor pruning needs the training data")
            self._taylor_pass(data)
            assert self.taylor is not None
            sel = select_global(
                masks,
                self.taylor.raw,
                self.step,
                normalize=self.taylor_normalize,
                constant_step=self.taylor_constant_step,
            )
        else:
            p = 1.0 if self.pruning == "l1" else 2.0
            sel = select_per_group(masks, lp_scores(masks, p), self.step, self.step_base)
        n = masks.prune_(sel)
        self._refresh(keep_saved=True)
        return n

    def _taylor_pass(self, data: Iterable[tuple[Tensor, Tensor]]) -> None:
        model, _, _ = self._require()
        assert self.taylor is not None
        was_training = model.training
        model.eval()
        task = self.phase
        try:
            with torch.enable_grad(), self.taylor.recording():
                for x, y in data:
                    loss = F.cross_entropy(model(x, task_id=task), y)
                    loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)

    def snapshot(self) -> dict[str, Any]:
        """Model and pruning state, to :meth:`restore` after a failed pruning step."""
        model, masks, _ = self._require()
        return {
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "pruned": {g: t.clone() for g, t in masks.pruned.items()},
        }

    def restore(self, snap: dict[str, Any]) -> None:
        model, masks, _ = self._require()
        model.load_state_dict(snap["model"])
        for g, t in snap["pruned"].items():
            masks.pruned[g].copy_(t)
        self._refresh(keep_saved=True)

    # ================================================================== the procedure
    def _fails(self, acc: float, best: float) -> bool:
        if self.absolute_tolerance:
            return acc < best - self.tolerance
        return acc < best * (1 - self.tolerance)

    def _epoch(
        self,
        trainer: TaskTrainer,
        task: Task | None,
        forward: Callable[[Tensor], Tensor],
        batches: Iterable[Batch] | None,
        optimizer: torch.optim.Optimizer,
        n_classes: int,
        bar: Any = None,
        epoch: int = 0,
    ) -> tuple[float, float]:
        """One epoch of ``Trainer.run_epoch`` with cross-entropy on ``forward``; returns (mean
        loss, training accuracy over the epoch, macro or micro)."""
        model, _, _ = self._require()
        if self.router is not None:
            self.router.train()  # (the trainer sets the model's mode)
        device = next(model.parameters()).device
        correct = torch.zeros(n_classes, dtype=torch.long, device=device)
        total = torch.zeros(n_classes, dtype=torch.long, device=device)

        def count(logits: Tensor, batch: Batch) -> None:
            y = batch.y.to(device)
            hit = logits.argmax(1) == y
            total.add_(torch.bincount(y, minlength=n_classes))
            correct.add_(torch.bincount(y[hit], minlength=n_classes))

        loss = trainer.run_epoch(
            task, optimizer, bar, batches=batches, forward=forward, metric=count, epoch=epoch
        )
        n = int(total.sum())
        if self.macro_accuracy:
            seen = total > 0
            acc = float((correct[seen].double() / total[seen].double()).mean())
        else:
            acc = float(correct.sum()) / max(n, 1)
        return loss, acc

    def _train_phase(
        self,
        trainer: TaskTrainer,
        task: Task | None,
        forward: Callable[[Tensor], Tensor],
        batches: Callable[[], Iterable[Batch]] | None,
        score_batches: Batches | None,
        optimizer: torch.optim.Optimizer,
        n_classes: int,
        max_epochs: int,
        prune: bool,
        log: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Pre-train with early stopping, then (if ``prune``) the prune-and-recover loop. Every
        epoch is one ``trainer.run_epoch`` over ``batches()`` (``None``: the method's own
        batches of ``task``)."""
        _, masks, _ = self._require()
        phase = self.phase
        epoch = 0
        bar = trainer.progress_bar(task) if task is not None else None

        def run(kind: str) -> float:
            nonlocal epoch
            t0 = time.perf_counter()
            data = None if batches is None else batches()
            loss, acc = self._epoch(
                trainer, task, forward, data, optimizer, n_classes, bar, epoch=epoch
            )
            if log is not None:
                log(
                    {
                        "task": min(phase, self.n_tasks - 1),
                        "epoch": epoch,
                        "phase": kind if phase < self.n_tasks else f"router-{kind}",
                        "loss": loss,
                        "train_acc": acc,
                        "pruned": masks.n_pruned(),
                        "lr": optimizer.param_groups[0]["lr"],
                        "seconds": round(time.perf_counter() - t0, 4),
                    }
                )
            epoch += 1
            return acc

        best, best_epoch = -math.inf, 0
        for e in range(max_epochs):
            m = run("train")
            # the code's stop test, against the best before this epoch: a tie does not stop
            stop = m >= 1.0 or (m < best and e - best_epoch > self.patience)
            if m > best:
                best, best_epoch = m, e
            if stop:
                break
        if self.lr_divisor != 1.0:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] / self.lr_divisor
        m = run("train")  # the extra epoch; as in the code, it does not count towards best
        summary: dict[str, Any] = {"pretrain_epochs": epoch, "best_acc": best, "iterations": 0}
        if not prune:
            summary["final_acc"] = m
            if bar is not None:
                bar.close()
            return summary

        snap = None
        iterations = 0
        last_acc = m
        m = best  # as the code: at least one pruning step, even if the extra epoch fell back
        while True:
            # stop on a failed recovery, or once too much is pruned: back to before the last
            # pruning step (the code's StopIteration)
            if self._fails(m, best) or masks.pruned_fraction() > self.max_pruned:
                if snap is not None:
                    self.restore(snap)
                    last_acc = snap["acc"]
                    iterations -= 1
                break
            snap = self.snapshot()
            snap["acc"] = last_acc
            data = score_batches() if (score_batches is not None) else None
            if self.prune_step(data) == 0:
                break
            iterations += 1
            for _ in range(self.max_recovery_epochs):
                m = last_acc = run("prune")
                best = max(best, m)
                if not self._fails(m, best):
                    break
        summary.update(
            iterations=iterations, final_acc=last_acc, epochs=epoch, pruned=masks.n_pruned()
        )
        if bar is not None:
            bar.close()
        return summary

    def _should_prune(self, task_id: int) -> bool:
        last = task_id == self.n_tasks - 1
        if not last:
            return True
        if self.prune_last == "auto":
            return self.route
        return bool(self.prune_last)

    def fit_task(
        self,
        data: Task | tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]],
        optimizer: torch.optim.Optimizer,
        task_id: int | None = None,
        batch_size: int = 256,
        max_epochs: int = 100,
        generator: torch.Generator | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Train and prune one task (Listing 1's ``train_task``), after
        :meth:`prepare_for_task`. ``data`` is a :class:`~retain.data.Task`, an ``(x, y)``
        pair of tensors (shuffled batches of ``batch_size``) or any re-iterable of ``(x, y)``
        batches (e.g. a ``DataLoader``). Call :meth:`finish_task` afterwards."""
        model, _, _ = self._require()
        task_id = self.current_task if task_id is None else task_id
        if task_id != self.phase:
            raise RuntimeError(f"call prepare_for_task({task_id}) first")
        batches, score_batches = _batch_sources(data, batch_size, generator)
        trainer = _standalone_trainer(model, self)

        def task_batches() -> Iterator[Batch]:
            for x, y in batches():
                yield Batch(x, y, torch.full_like(y, task_id), task_id)

        summary = self._train_phase(
            trainer,
            data if isinstance(data, Task) else None,
            lambda x: model(x, task_id=task_id),
            task_batches,
            score_batches,
            optimizer,
            model.classes_per_task[task_id],
            max_epochs,
            prune=self._should_prune(task_id),
            log=log,
        )
        self._record(task_id, summary)
        return summary

    def _record(self, phase: int, summary: dict[str, Any]) -> None:
        self.history = [h for h in self.history if h["phase"] != phase]
        self.history.append({"phase": phase, **summary})

    @procedure
    def train_task(self, task: Task, trainer: TaskTrainer) -> None:
        """The engine's entry point: :meth:`fit_task` with the run's optimiser settings and
        batch order, every epoch one ``trainer.run_epoch`` (so the run's augmentation, mixed
        precision and progress apply); after the last task, also the router phase. ``epochs``
        caps pre-training (early stopping usually ends it sooner); ``lr_milestones`` are not
        used. Runs resume at task boundaries; no checkpoint is written inside a task."""
        model, _, _ = self._require()
        cfg = trainer.config
        optimizer = trainer.make_optimizer(self.trainable_parameters(task))

        def score_batches() -> Iterator[tuple[Tensor, Tensor]]:
            return iterate_batches((task.x_train, task.y_train), cfg.batch_size, shuffle=False)

        summary = self._train_phase(
            trainer,
            task,
            lambda x: model(x, task_id=task.id),
            None,
            score_batches if self.pruning == "taylor" else None,
            optimizer,
            model.classes_per_task[task.id],
            cfg.epochs,
            prune=self._should_prune(task.id),
            log=trainer.events.append,
        )
        self._record(task.id, summary)
        if self.route and task.id == model.n_tasks - 1:
            self.finish_task(task.id)
            router_opt = trainer.make_optimizer(self.router_parameters())
            self.train_router(
                trainer.benchmark.tasks,
                router_opt,
                batch_size=cfg.batch_size,
                max_epochs=self.router_epochs or cfg.epochs,
                generator=trainer.generator,
                log=trainer.events.append,
                trainer=trainer,
            )

    # ================================================================== routing
    def train_router(
        self,
        tasks: Sequence[Task | tuple[Tensor, Tensor]],
        optimizer: torch.optim.Optimizer,
        batch_size: int = 256,
        max_epochs: int = 100,
        generator: torch.Generator | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
        trainer: TaskTrainer | None = None,
    ) -> dict[str, Any]:
        """The final phase: a task classifier on the penultimate features, trained on every
        task's training inputs labelled with their task id, with the still-free neurons (then
        claimed by the router) and early stopping, not pruned. ``tasks[t]`` is a Task or the
        ``(x, y)`` training pair of task ``t`` (labels unused). ``optimizer`` should hold
        :meth:`router_parameters`. ``trainer``: the engine's (from :meth:`train_task`; its
        augmentation and precision apply), else a plain fp32 one."""
        model, _, _ = self._require()
        assert self.router is not None
        T = model.n_tasks
        if len(tasks) != T:
            raise ValueError(f"the router needs the data of all {T} tasks, got {len(tasks)}")
        if self.finished < T - 1:
            self.finish_task(T - 1)
        self.prepare_for_task(T)
        xs = [t.x_train if isinstance(t, Task) else t[0] for t in tasks]
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        if self.router_samples_per_task is not None:
            xs = [
                x[torch.randperm(len(x), generator=g)[: self.router_samples_per_task]] for x in xs
            ]
        router = self.router

        def batches() -> Iterator[Batch]:
            for x, t in _mixed_batches(xs, batch_size, g):
                yield Batch(x, t, t)

        summary = self._train_phase(
            trainer if trainer is not None else _standalone_trainer(model, self),
            None,
            lambda x: router(model.features(x)),
            batches,
            None,
            optimizer,
            T,
            max_epochs,
            prune=False,
            log=log,
        )
        self.finish_task(T)
        self.router_trained = True
        self._record(T, summary)
        with torch.inference_mode():
            model.eval()
            self.router.eval()
            hits = n = 0
            for x, t in _mixed_batches(xs, 2048, None):
                hits += int((self.router(model.features(x)).argmax(1) == t).sum())
                n += len(t)
            self.router_accuracy["train"] = hits / max(n, 1)
            tests = [t for t in tasks if isinstance(t, Task)]
            if len(tests) == T:
                hits = n = 0
                for t in tests:
                    for (x,) in iterate_batches((t.x_test,), 2048, shuffle=False):
                        hits += int((self.router(model.features(x)).argmax(1) == t.id).sum())
                        n += len(x)
                self.router_accuracy["test"] = hits / max(n, 1)
        return summary

    # ================================================================== inference
    def _routed(self, feats: Tensor, upto: int) -> Tensor:
        model, _, _ = self._require()
        allh = model.logits(feats, upto=upto)
        if not (self.route and self.router_trained):
            return allh
        assert self.router is not None
        tid = self.router(feats)[:, :upto].argmax(1)
        own = model.own_task_mask(tid, upto)
        return allh.masked_fill(~own, float("-inf"))

    @torch.inference_mode()
    def predict(self, x: Tensor, task_id: int | None = None, upto: int | None = None) -> Tensor:
        """Task-aware: that task's head (the oracle). Task-agnostic: the router picks the task
        and that task's head gives the logits (the other heads' logits are -inf)."""
        model, _, _ = self._require()
        if task_id is not None:
            return model(x, task_id=task_id)
        upto = self.current_task + 1 if upto is None else upto
        return self._routed(model.features(x), upto)

    @torch.inference_mode()
    def predict_routed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(task id chosen by the router, class predicted by that task's head), one pass."""
        model, _, _ = self._require()
        if not self.router_trained:
            raise RuntimeError("the router is not trained yet (train_router)")
        assert self.router is not None
        feats = model.features(x)
        tid = self.router(feats).argmax(1)
        logits = model.logits(feats, upto=model.n_tasks)
        own = model.own_task_mask(tid, model.n_tasks)
        glob = logits.masked_fill(~own, float("-inf")).argmax(1)
        return tid, glob - model.class_offsets[tid]

    @torch.inference_mode()
    def predict_both(self, x: Tensor, task_id: int, upto: int) -> tuple[Tensor, Tensor]:
        model, _, _ = self._require()
        feats = model.features(x)
        return model.logits(feats, task_id=task_id), self._routed(feats, upto)

    # ================================================================== reports
    def capacity_report(self) -> dict[str, Any]:
        """Per layer group and per task: neurons owned (``groups``, ``total``: per task, by the
        router, pruned in the task being trained, free) and, under ``weights``, the weights
        used per layer after every task in the format of
        :func:`retain.core.masks.capacity_report` (comparable with PackNet and WSN)."""
        _, masks, _ = self._require()
        rep = masks.capacity(self.n_tasks, {self.n_tasks: "router"})
        rep["weights"] = masks.weight_usage(self.finished + 1)
        for key in ("cap", "cap_raw"):  # WSN's CAP, for tables next to the masked methods
            rep["total"][key] = rep["weights"]["total"][key]
        return rep

    def format_capacity(self) -> str:
        return format_capacity(self.capacity_report())

    def extra_metrics(self) -> dict[str, Any]:
        """Capacity per layer and task, router accuracy, the pruning log of every task."""
        rep = self.capacity_report()
        tot = rep["total"]
        return {
            "capacity": rep,
            "neurons_per_task": [c / tot["size"] for c in tot["per_task"]],
            "free_fraction": tot["free"] / tot["size"],
            "router_accuracy": dict(self.router_accuracy),
            "history": list(self.history),
        }

    # ================================================================== state
    def state_dict(self) -> dict[str, Any]:
        _, masks, _ = self._require()
        assert self.router is not None
        return {
            **super().state_dict(),
            "masks": masks.state_dict(),
            "router": self.router.state_dict(),
            "router_trained": self.router_trained,
            "finished": self.finished,
            "phase": self.phase,
            "history": list(self.history),
            "router_accuracy": dict(self.router_accuracy),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        _, masks, _ = self._require()
        assert self.router is not None
        masks.load_state_dict(state["masks"])
        self.router.load_state_dict(state["router"])
        self.router_trained = state["router_trained"]
        self.finished = state["finished"]
        self.phase = state["phase"]
        self.history = list(state["history"])
        self.router_accuracy = dict(state["router_accuracy"])
        self._refresh(keep_saved=False)


# ====================================================================================== data
def _standalone_trainer(model: ContinualModel, method: Eidetic) -> TaskTrainer:
    """The engine's trainer for the API without :func:`retain.fit` (a user's optimiser)."""
    from retain.engine.trainer import Trainer

    return Trainer.standalone(model, method)


def _batch_sources(
    data: Task | tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]],
    batch_size: int,
    generator: torch.Generator | None,
) -> tuple[Batches, Batches]:
    """(shuffled training batches, fixed-order scoring batches) from any accepted ``data``."""
    if isinstance(data, Task):
        data = (data.x_train, data.y_train)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
        g = generator if generator is not None else torch.Generator().manual_seed(0)

        def shuffled() -> Iterator[tuple[Tensor, Tensor]]:
            return iterate_batches((x, y), batch_size, generator=g)  # type: ignore[return-value]

        def ordered() -> Iterator[tuple[Tensor, Tensor]]:
            return iterate_batches((x, y), batch_size, shuffle=False)  # type: ignore[return-value]

        return shuffled, ordered
    loader = data
    return (lambda: loader), (lambda: loader)  # type: ignore[return-value]


def _mixed_batches(
    xs: Sequence[Tensor], batch_size: int, generator: torch.Generator | None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches over the union of several tasks' inputs labelled with the task index, without
    concatenating them (shuffled when a generator is given)."""
    sizes = torch.tensor([len(x) for x in xs])
    ends = sizes.cumsum(0)
    starts = ends - sizes
    n = int(ends[-1])
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for idx in order.split(batch_size):
        tid = torch.searchsorted(ends, idx, right=True)
        x = torch.empty((len(idx), *xs[0].shape[1:]), dtype=xs[0].dtype)
        for t in tid.unique().tolist():
            sel = tid == t
            x[sel] = xs[t][idx[sel] - starts[t]]
        yield x, tid


__all__ = ["FREE", "Eidetic"]
