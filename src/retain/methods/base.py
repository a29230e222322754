"""The method contract: a few hooks around a training step that the engine (or you) owns.

A method is used like this, by :func:`retain.fit` or by a loop of your own::

    method.setup(model, benchmark)        # a ContinualModel; the Benchmark or its BenchmarkInfo
    trainer = Trainer.standalone(model, method, generator, benchmark=benchmark, epochs=epochs)
    for task in benchmark:
        method.before_task(task)          # or method.resume_task(task) inside a resumed task
        if method.own_procedure:          # Eidetic, PackNet, Joint: phases of their own
            method.train_task(task, trainer)
        else:
            opt = torch.optim.SGD(method.trainable_parameters(task), lr=0.01)
            for epoch in range(epochs):
                model.train()
                method.before_epoch(task, epoch)
                for batch in method.batches(task, batch_size, generator):
                    loss = method.loss(batch, task)
                    opt.zero_grad(); loss.backward()
                    method.after_backward(batch, task)
                    opt.step()
                    method.after_step(batch, task)
        method.after_task(task)
        model.eval()
        logits = method.predict(x, task_id=task.id)      # task-aware
        logits = method.predict(x, upto=task.id + 1)     # task-agnostic over seen classes

``setup`` refuses a plain ``nn.Module`` (wrap it: ``ContinualModel.wrap(module, benchmark)``,
as :func:`retain.fit` does) and ``benchmark.info`` (free-form facts, not a BenchmarkInfo).
``predict`` without a task id refuses (``ValueError``) for a method with
``task_agnostic = False`` (WSN, PackNet, HAT, SupSup). A method whose ``train_task`` is a
procedure of its own (``own_procedure``, see :func:`procedure`) refuses its hooks driven by the
plain loop (``loss`` raises ``RuntimeError``): in it, those hooks alone would silently train
another method (Eidetic without pruning, PackNet without retraining, Joint on one task).

The hooks, in the order the engine calls them, and the methods that override them:

=====================  ==============================================================
hook                   overridden by
=====================  ==============================================================
setup                  most: swap layers, add masks, agents, estimators
before_task            consolidating methods: per-task caches, freezing, teachers
resume_task            hat, spg, wsn, packnet (caches ``before_task`` builds from state)
trainable_parameters   methods that train more or fewer parameters than backbone + head
before_epoch           spg (importance at an epoch), dynamos (warm-up), hat (annealing)
batches                replay (mixes memory in), joint, exemplar methods
loss                   regularisers, distillation, replay, masks (the objective);
                       ``regularizer()``: its batch-independent term (ewc, mas, si)
after_backward         gradient edits: spg, hat, wsn, packnet, eidetic, agem, ewc (SI)
after_step             invariants: freezing, path integrals, buffer admission (replay)
train_task             eidetic, packnet, joint (``own_procedure``: phases over
                       ``Trainer.run_epoch``); scrollnet (its base's)
after_task             consolidation: importance, masks, pruning, buffers
forward_task           per-task forward passes (masks, experts); ``predict`` derives
predict, predict_both  methods with their own classifier (icarl, bic, dynamos, eidetic)
extra_metrics          method numbers for ``metrics.json`` (capacity, blocked weights)
write_artifacts        extra files in the run folder (dynamos' gate analysis)
state_dict, load_..    everything besides the model needed to resume
=====================  ==============================================================

Only :class:`~retain.engine.Trainer` calls ``backward`` and ``step``: a method whose procedure
is not "epochs of SGD" (Eidetic's prune-and-recover loop, PackNet's retraining) overrides
:meth:`Method.train_task` (decorated with :func:`procedure`, its class setting
``own_procedure = True``) and runs its phases through ``Trainer.run_epoch``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.data.benchmark import Task
from retain.data.iterate import iterate_batches

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from retain.data.benchmark import Benchmark
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
    #: position of the batch in its epoch and the epoch's number of batches (HAT's annealing)
    index: int = 0
    of: int = 1
    #: per-sample values of the stream rows that ``loss`` computed for a hook after the step
    #: (replay stores them with the samples: DER's logits); ``None``: nothing recorded
    memo: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class BenchmarkInfo:
    """What a method may know about the sequence before it starts (sizes, not data)."""

    n_tasks: int
    classes_per_task: list[int]
    input_shape: tuple[int, ...]

    @classmethod
    def of(cls, benchmark: BenchmarkInfo | Benchmark | None) -> BenchmarkInfo | None:
        """The info of a :class:`~retain.data.Benchmark` (itself for a ``BenchmarkInfo``;
        ``None`` stays ``None``, for methods whose ``setup`` needs none)."""
        from retain.data.benchmark import Benchmark

        if benchmark is None or isinstance(benchmark, BenchmarkInfo):
            return benchmark
        if isinstance(benchmark, Benchmark):
            return cls(
                benchmark.n_tasks, list(benchmark.classes_per_task), tuple(benchmark.input_shape)
            )
        hint = (
            " (bench.info is free-form facts; pass bench itself)"
            if isinstance(benchmark, dict)
            else ""
        )
        raise TypeError(
            "method.setup(model, info) needs the Benchmark or a retain.BenchmarkInfo, got "
            f"{type(benchmark).__name__}{hint}"
        )


class TaskTrainer(Protocol):
    """What :meth:`Method.train_task` may use of the engine (:class:`~retain.engine.Trainer`
    implements it): the run's settings and data, and the engine's epochs of SGD."""

    config: Any  # retain.engine.TrainConfig
    benchmark: Benchmark
    generator: torch.Generator
    events: Any  # retain.engine.runio.EventLog: ``append(dict)``

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer: ...

    def progress_bar(self, task: Task, total: int | None = None) -> Any: ...

    def train_epochs(
        self,
        task: Task,
        epochs: int | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> None: ...

    def run_epoch(
        self,
        task: Task,
        optimizer: torch.optim.Optimizer,
        bar: Any = None,
        *,
        batches: Iterable[Batch] | None = None,
        forward: Callable[[Tensor], Tensor] | None = None,
        metric: Callable[[Tensor, Batch], None] | None = None,
    ) -> float: ...


def _continual_model(model: Any) -> Any:
    """``model`` if it has the interface of a :class:`~retain.models.ContinualModel`
    (a backbone and task heads); a plain ``nn.Module`` is refused, naming how to wrap it."""
    if isinstance(model, nn.Module) and not (
        hasattr(model, "backbone") and hasattr(model, "heads")
    ):
        raise TypeError(
            f"method.setup needs a retain.ContinualModel (a backbone plus task heads), got "
            f"{type(model).__name__}; wrap it first: model = retain.ContinualModel.wrap(model, "
            "bench) (retain.fit does this itself)"
        )
    return model


def _checked_setup(setup: Callable[..., None]) -> Callable[..., None]:
    """``setup`` that first checks the model and turns a Benchmark into its BenchmarkInfo
    (applied to every override of :meth:`Method.setup` by ``Method.__init_subclass__``)."""
    if getattr(setup, "_checked", False):
        return setup

    @functools.wraps(setup)
    def checked(self: Method, model: Any, *args: Any, **kwargs: Any) -> None:
        model = _continual_model(model)
        if args:
            args = (BenchmarkInfo.of(args[0]), *args[1:])
        elif "info" in kwargs:
            kwargs["info"] = BenchmarkInfo.of(kwargs["info"])
        return setup(self, model, *args, **kwargs)

    checked._checked = True  # type: ignore[attr-defined]
    return checked


def procedure(train_task: Callable[..., None]) -> Callable[..., None]:
    """Decorator of a :meth:`Method.train_task` that is a procedure of its own (its class also
    sets ``own_procedure = True``): while it runs, :meth:`Method.require_procedure` passes, so
    the hooks it drives through the trainer work and the same hooks driven by a loop of one's
    own refuse instead of silently training another method."""

    @functools.wraps(train_task)
    def run(self: Method, task: Task, trainer: TaskTrainer) -> None:
        outer, self._in_procedure = self._in_procedure, True
        try:
            train_task(self, task, trainer)
        finally:
            self._in_procedure = outer

    return run


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
    #: whether every task's logits come from one shared forward pass; ``False`` where
    #: :meth:`forward_task` differs per task (masks, experts): ``predict`` then runs it per task
    shared_forward: ClassVar[bool] = True
    #: whether the heads of every task so far are trained whatever ``loss_heads`` says
    #: (replayed or joint samples train their own heads)
    train_seen_heads: ClassVar[bool] = False
    #: ``--smoke`` (:mod:`retain.smoke`): upper and lower bounds of this method's arguments
    #: that multiply its work (epochs, rounds), applied after every other config source
    smoke_caps: ClassVar[dict[str, float]] = {}
    smoke_floors: ClassVar[dict[str, float]] = {}
    #: whether :meth:`train_task` is a procedure of its own (Eidetic, PackNet, Joint), not
    #: epochs of SGD through the hooks: a loop of one's own must call ``train_task`` (with
    #: ``retain.Trainer.standalone``); its ``train_task`` is decorated with :func:`procedure`
    own_procedure: ClassVar[bool] = False
    _in_procedure: bool = False  # set while a @procedure train_task runs

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "setup" in cls.__dict__:  # every override checks its model and info first
            cls.setup = _checked_setup(cls.__dict__["setup"])  # type: ignore[method-assign]

    def __new__(cls, *args: Any, **kwargs: Any) -> Method:
        self = super().__new__(cls)
        self._hyperparameters = _given_arguments(cls, args, kwargs)
        return self

    def hyperparameters(self) -> dict[str, Any] | None:
        """The arguments this method was constructed with, by name (positional ones too), as
        given (defaults not given are not included): what a run folder's ``config.yaml``
        records as ``method_args`` (:func:`retain.fit`), whether the method was made by
        :func:`~retain.methods.make_method` or directly (``EWC(lamb=5)``). ``None`` when they
        cannot be named (a constructor taking ``*args``)."""
        given = self.__dict__.get("_hyperparameters")
        return None if given is None else dict(given)

    def __init__(self, loss_heads: str = "task") -> None:
        if loss_heads not in LOSS_HEADS:
            raise ValueError(
                f"loss_heads must be one of {', '.join(LOSS_HEADS)}, got {loss_heads!r}"
            )
        self.loss_heads = loss_heads
        self.model: ContinualModel | None = None
        self.info: BenchmarkInfo | None = None
        self.current_task: int = -1

    @property
    def protocol(self) -> str:
        """The training protocol reports show as ``heads``: ``"task"`` (the loss sees the
        current task's outputs only) or ``"seen"`` (every class seen so far); the
        ``loss_heads`` this method trains with, whether chosen or fixed by the method."""
        return self.loss_heads

    # ------------------------------------------------------------------ lifecycle hooks
    def setup(self, model: ContinualModel, info: BenchmarkInfo | Benchmark) -> None:
        """Adapt the model once, before the first task (swap layers, add agents, ...).

        ``info`` may be the :class:`~retain.data.Benchmark` itself (its
        :meth:`BenchmarkInfo.of` is used); a plain ``nn.Module`` as ``model`` is refused with
        a ``TypeError`` naming :meth:`retain.ContinualModel.wrap`. Overrides get both checks."""
        self.model = _continual_model(model)
        self.info = BenchmarkInfo.of(info)

    def before_task(self, task: Task) -> None:
        self.current_task = task.id

    def resume_task(self, task: Task) -> None:
        """Called instead of :meth:`before_task` when a run resumes inside ``task``, after
        :meth:`load_state_dict`: rebuild what ``before_task`` derives from the state (caches,
        freezing) without starting the task again."""
        self.current_task = task.id

    def before_epoch(self, task: Task, epoch: int) -> None:
        """Called before every epoch of :meth:`batches` (``epoch`` counts from 0 in the task)."""

    def after_task(self, task: Task) -> None:
        """Consolidate after training a task (importance, masks, buffers, ...)."""

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        """Parameters the optimiser of ``task`` updates: the backbone and the heads in the loss."""
        assert self.model is not None
        seen = self.loss_heads == "seen" or self.train_seen_heads
        heads = list(range(task.id + 1)) if seen else [task.id]
        return list(self.model.backbone.parameters()) + self.model.head_parameters(heads)

    def batches(self, task: Task, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Training batches of one epoch. Methods that mix in other data override this."""
        tid = torch.full((len(task.y_train),), task.id, dtype=torch.long)
        of = -(-len(task.y_train) // batch_size)
        for i, (x, y, t) in enumerate(
            iterate_batches(
                (task.x_train, task.y_train, tid),
                batch_size,
                generator=generator,
                shuffle=not task.ordered,
            )
        ):
            yield Batch(x, y, t, task.id, i, of)

    def loss(self, batch: Batch, task: Task) -> Tensor:
        """Training loss of one batch; by default cross-entropy (see ``loss_heads``)."""
        assert self.model is not None
        self.require_procedure()
        if self.loss_heads == "task" and batch.task is not None:
            # one task's samples: its own head only (same as masking the other heads' logits)
            return F.cross_entropy(self.model(batch.x, task_id=batch.task), batch.y)
        logits = self.model(batch.x, upto=self.current_task + 1)  # every head seen so far
        return self.cross_entropy(logits, batch, task)

    def regularizer(self) -> Tensor | None:
        """The loss term that does not depend on the batch (EWC's penalty), included in
        :meth:`loss` by the methods that have one; ``None`` when there is none. ScrollNet adds
        it once per narrower width (``penalty_per_width``)."""
        return None

    def cross_entropy(self, logits: Tensor, batch: Batch, task: Task) -> Tensor:
        """A helper (not a hook): CE on concatenated logits of heads ``0..t``, restricted to
        each sample's own task's outputs (``loss_heads="task"``) or over all of them with
        global labels (``"seen"``)."""
        assert self.model is not None
        if self.model.shared_head:
            return F.cross_entropy(logits, batch.y)
        target = self.model.global_labels(batch.y, batch.task_ids)
        if self.loss_heads == "task":
            own = self.model.own_task_mask(batch.task_ids, self.current_task + 1)
            logits = logits.masked_fill(~own, float("-inf"))
        return F.cross_entropy(logits, target)

    def after_backward(self, batch: Batch, task: Task) -> None:
        """Edit gradients between ``backward()`` and ``step()`` (masks, soft masks, freezing)."""

    def after_step(self, batch: Batch, task: Task) -> None:
        """Restore invariants after ``step()`` (re-zero pruned weights, path integrals, admit
        ``batch`` to a replay buffer)."""

    def train_task(self, task: Task, trainer: TaskTrainer) -> None:
        """Train one task. The default is the engine's epochs of SGD with the hooks above.
        An override that is a procedure of its own is decorated with :func:`procedure` and
        its class sets ``own_procedure = True``."""
        trainer.train_epochs(task)

    def require_procedure(self) -> None:
        """Refuse (``RuntimeError``) a hook of a method with its own procedure that is driven
        outside its :meth:`train_task` (by a loop of one's own); :meth:`loss` calls it."""
        if self.own_procedure and not self._in_procedure:
            raise RuntimeError(
                f"method {self.name!r} trains a task with a procedure of its own, not with a "
                "loop over its hooks: call method.train_task(task, trainer) with trainer = "
                "retain.Trainer.standalone(model, method, generator, benchmark=bench, ...)"
            )

    # ------------------------------------------------------------------ inference
    def forward_task(self, x: Tensor, task_id: int) -> Tensor:
        """Task-aware logits of ``task_id`` (its head; methods with per-task masks or experts
        set ``shared_forward = False`` and apply them here)."""
        assert self.model is not None
        return self.model(x, task_id=task_id)

    @torch.inference_mode()
    def predict(self, x: Tensor, task_id: int | None = None, upto: int | None = None) -> Tensor:
        """Logits. With ``task_id``: :meth:`forward_task` (task-aware). Without: the
        concatenated heads of tasks ``< upto`` (task-agnostic); ``upto`` defaults to the tasks
        seen so far. Without a shared forward, every task's own ``forward_task`` is
        concatenated.

        Raises:
            ValueError: no ``task_id`` for a method that is task-aware only
                (``task_agnostic = False``: WSN, PackNet, HAT, SupSup)."""
        assert self.model is not None
        if task_id is not None:
            return self.forward_task(x, task_id)
        if not self.task_agnostic:
            raise ValueError(
                f"method {self.name!r} predicts only with a task id (it is task-aware only): "
                "call method.predict(x, task_id=t)"
            )
        upto = self.current_task + 1 if upto is None else upto
        if not self.shared_forward:
            return torch.cat([self.forward_task(x, t) for t in range(upto)], dim=1)
        return self.model(x, upto=upto)

    @torch.inference_mode()
    def predict_both(self, x: Tensor, task_id: int, upto: int) -> tuple[Tensor, Tensor | None]:
        """Task-aware logits of ``task_id`` and task-agnostic logits over heads ``< upto``
        (``None`` for a task-aware method), from one forward pass where the forward is shared
        (FACIL's evaluation)."""
        assert self.model is not None
        if not self.shared_forward:
            aware = self.forward_task(x, task_id)
            return aware, (self.predict(x, upto=upto) if self.task_agnostic else None)
        if not self.task_agnostic:
            return self.forward_task(x, task_id), None
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

    def write_artifacts(self, run_dir: Path) -> None:
        """Write method-specific files into the run folder after the run (e.g. Dynamos' gate
        analysis); called by the trial runner once every task is done."""

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything besides the model's own state needed to resume (buffers, importances)."""
        return {"current_task": self.current_task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current_task = state["current_task"]


def _given_arguments(cls: type, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """``cls(*args, **kwargs)``'s arguments by the names of ``cls.__init__``'s parameters
    (``**kwargs`` of its own flattened); None when they cannot be bound (the constructor
    raises its own error) or a ``*args`` parameter took some."""
    import inspect

    try:
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    except (TypeError, ValueError):
        return None
    out: dict[str, Any] = {}
    for i, (name, value) in enumerate(bound.arguments.items()):
        kind = bound.signature.parameters[name].kind
        if i == 0:  # self
            continue
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                return None
        elif kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"method name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls
