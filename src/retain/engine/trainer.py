"""The task loop: train each task with a method's hooks, evaluate every task after every task,
checkpoint, resume.

:func:`fit` is the entry point. One training step is exactly::

    loss = method.loss(batch, task)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    method.after_backward(batch, task)
    optimizer.step()
    method.after_step(batch, task)

:meth:`Trainer.run_epoch` is the only code in retain that calls ``backward`` and ``step``.

Evaluation runs under ``torch.inference_mode()`` in large batches and gets the task-aware and
the task-agnostic accuracy of a task from one forward pass (``Method.predict_both``).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from retain.data.benchmark import Benchmark, Task
from retain.data.iterate import iterate_batches
from retain.engine import distributed, runio
from retain.engine.device import autocast, move_benchmark, resolve_device, to_device
from retain.methods.base import Batch, BenchmarkInfo, Method
from retain.metrics import AccuracyMatrix
from retain.models.continual import ContinualModel

OPTIMIZERS = ("sgd", "adam", "adamw")


class SetupError(ValueError):
    """A method refused the model or the benchmark in ``Method.setup`` (before any training),
    e.g. WSN given a backbone with ordinary BatchNorm."""


#: the file :func:`fit` writes into a run folder whose training diverged (:class:`Diverged`)
DIVERGED = "diverged.json"


class Diverged(RuntimeError):
    """Training produced a non-finite loss (or non-finite weights). Raised by
    :meth:`Trainer.run_epoch` at the end of the epoch in which it happened; ``task``, ``epoch``
    and ``step`` (the epoch's first step with a non-finite loss) count from 0, as in
    ``events.jsonl``. :func:`fit` first writes :data:`DIVERGED` into the run folder."""

    def __init__(self, task: int | None, epoch: int, step: int, what: str = "loss") -> None:
        self.task, self.epoch, self.step, self.what = task, epoch, step, what
        self.run_dir: Path | None = None  # the folder marked, set by fit
        where = "" if task is None else f"task {task}, "  # None: a phase outside the tasks
        super().__init__(
            f"training diverged: non-finite {what} at {where}epoch {epoch}, step {step} "
            "(counted from 0); lower the lr"
        )

    def __reduce__(self):  # picklable (Ray, multiprocessing)
        return type(self), (self.task, self.epoch, self.step, self.what)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Diverged:
        """The exception again, from the content of :data:`DIVERGED`."""
        return cls(record["task"], record["epoch"], record["step"], record.get("what", "loss"))

    def record(self) -> dict[str, Any]:
        """The content of :data:`DIVERGED`."""
        return {
            "task": self.task,
            "epoch": self.epoch,
            "step": self.step,
            "what": self.what,
            "message": str(self),
        }


@dataclass
class TrainConfig:
    """How every task is trained. A fresh optimiser (and schedule) is made for each task.

    Attributes:
        epochs: epochs per task.
        batch_size: training batch size.
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        lr, momentum, weight_decay: optimiser settings (momentum is SGD's only).
        lr_milestones, lr_gamma: multiply the lr by ``lr_gamma`` at these epochs of each task.
        eval_batch_size: batch size of evaluation (no gradients).
        checkpoint_every: also checkpoint every this many epochs inside a task (0: only at
            task boundaries).
        augment: batched training-time augmentation, e.g. ``{crop: 4, flip: true}`` (random
            crop after zero-padding 4 pixels, horizontal flip; see
            :func:`retain.data.augment.make_augment`); empty: none.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (see
            :mod:`retain.engine.device`).
        amp: mixed precision: ``off``, ``bf16`` or ``fp16`` (CUDA only, with a gradient scaler).
    """

    epochs: int = 1
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    eval_batch_size: int = 1000
    checkpoint_every: int = 0
    augment: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    amp: str = "off"

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "momentum", "weight_decay", "lr_gamma"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0 or self.checkpoint_every < 0:
            raise ValueError("momentum, weight_decay and checkpoint_every must be >= 0")
        from retain.data.augment import make_augment
        from retain.engine.device import check_amp, resolve_device

        make_augment(self.augment)
        check_amp(self.amp, resolve_device(self.device))


@dataclass
class RunResult:
    """What :func:`fit` returns: both accuracy matrices and where the run was written."""

    task_aware: AccuracyMatrix
    task_agnostic: AccuracyMatrix
    run_dir: Path | None = None
    seconds_per_task: list[float] = field(default_factory=list)
    #: ``Method.extra_metrics()`` after the last trained task (e.g. capacity of masked methods)
    method_metrics: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """The content of ``metrics.json``: deterministic for a given config and seed."""
        out = {
            "task_aware": {**self.task_aware.to_dict(), "summary": self.task_aware.summary()},
            "task_agnostic": {
                **self.task_agnostic.to_dict(),
                "summary": self.task_agnostic.summary(),
            },
        }
        if self.method_metrics:
            out["method"] = self.method_metrics
        return out


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG's state as tensors and plain containers (a checkpoint holds nothing else):
    numpy's ``("MT19937", keys, pos, has_gauss, cached_gaussian)`` with its keys as a tensor."""
    kind, keys, *rest = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "batches": generator.get_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), *rest),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["batches"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])


def _fit_config(config: TrainConfig, seed: int, method: Method, benchmark: Benchmark) -> dict:
    """The config earlier versions of :func:`fit` stored in a checkpoint when given no
    ``run_config`` (such a checkpoint still resumes)."""
    return {
        "method": method.name,
        "benchmark": benchmark.name,
        "n_tasks": benchmark.n_tasks,
        "seed": seed,
        **asdict(config),
    }


_NOT_PLAIN = object()


def _plain(value: Any) -> Any:
    """``value`` as a config holds it (tuples as lists, paths as strings), or
    ``_NOT_PLAIN`` when it holds anything but numbers, strings, booleans, None, lists and
    mappings with string keys (a module, a tensor, a method)."""
    import os

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NOT_PLAIN
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        plain = {k: _plain(v) for k, v in value.items()}
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in plain.values()) else plain
    return _NOT_PLAIN


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _method_args(method: Method) -> dict[str, Any] | None:
    """The method's arguments as a config holds them when it is a registered method
    (:meth:`Method.hyperparameters`), else None."""
    from retain.methods import REGISTRY

    recorded = getattr(method, "hyperparameters", None)  # a Method's; not a look-alike's
    given = recorded() if callable(recorded) else None
    if REGISTRY.get(method.name) is not type(method) or given is None:
        return None
    args = _plain(given)
    return None if args is _NOT_PLAIN else args


def _benchmark_args(benchmark: Benchmark) -> dict[str, Any] | None:
    """The arguments ``get_benchmark`` was given for ``benchmark`` (``Benchmark.built_by``),
    None for a benchmark built otherwise (or changed since: another name, other tasks)."""
    from retain.data.benchmarks import BENCHMARKS

    built = getattr(benchmark, "built_by", None)
    if not isinstance(built, dict) or built.get("name") not in BENCHMARKS:
        return None
    if built["name"] != benchmark.name or built.get("n_tasks") != benchmark.n_tasks:
        return None
    args = _plain(built.get("args"))
    return None if args is _NOT_PLAIN or not isinstance(args, dict) else args


def _model_recipe(model: nn.Module, benchmark: Benchmark) -> tuple[str, dict, str, str | None]:
    """``(model, model_args, head, own)`` of a config for ``model``: from ``build_model``'s
    record (``model.built_by``) when it built this model for this benchmark's shapes with the
    arguments ``retain run`` can pass (``own`` None); else the class of the module of one's own
    (the backbone of a ContinualModel), no arguments, and its class path as ``own``."""
    from retain.models.registry import MODELS

    built = getattr(model, "built_by", None)
    head = str(getattr(model, "head_layout", "task"))
    if (
        type(model) is ContinualModel
        and isinstance(built, dict)
        and built.get("name") in MODELS
        and built.get("head_bias") is True
        and built.get("head") == head
        and tuple(built.get("input_shape", ())) == tuple(benchmark.input_shape)
        and list(built.get("classes_per_task", [])) == benchmark.classes_per_task
    ):
        args = _plain(built.get("args"))
        if args is not _NOT_PLAIN and isinstance(args, dict):
            return built["name"], args, head, None
    own = type(model.backbone) if isinstance(model, ContinualModel) else type(model)
    return own.__name__, {}, head, _class_path(own)


#: the fields of :class:`TrainConfig` that ``RunConfig.to_dict`` leaves out at these defaults
#: (``retain.experiment.LATER_DEFAULTS``; not imported: the engine does not import the
#: experiment layer, which imports it; the keys and order of :func:`describe_run` are checked
#: against ``RunConfig.to_dict`` by the tests)
_LATER_TRAIN_DEFAULTS: dict[str, Any] = {"augment": {}, "device": "cpu", "amp": "off"}


def describe_run(
    model: nn.Module, benchmark: Benchmark, method: Method, config: TrainConfig, seed: int
) -> dict[str, Any]:
    """The config of a :func:`fit` run as ``retain run`` writes it to ``config.yaml``
    (``RunConfig.to_dict()``, the same keys in the same order): the names and arguments of the
    method (registered: :func:`~retain.methods.make_method` or its class, e.g.
    ``EWC(lamb=5)``), the benchmark (:func:`~retain.data.get_benchmark`) and the model
    (:func:`~retain.models.build_model`), the training settings, the seed and torch's number
    of threads.

    A part that is a Python object of one's own (a module, a method class or a benchmark built
    otherwise, or arguments that are not plain values) gets its class name (the benchmark: its
    name) and no arguments, and is listed under :data:`~retain.engine.runio.OWN_OBJECTS`
    (``{"model": "mypackage.Net"}``): ``retain run --resume`` refuses such a folder (it cannot
    rebuild the object), ``fit(..., resume=True)`` continues it."""
    own: dict[str, str] = {}
    method_args = _method_args(method)
    if method_args is None:
        own["method"] = _class_path(type(method))
    benchmark_args = _benchmark_args(benchmark)
    if benchmark_args is None:
        own["benchmark"] = benchmark.name
    model_name, model_args, head, own_model = _model_recipe(model, benchmark)
    if own_model is not None:
        own["model"] = own_model
    train = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    described = {
        **train,
        "method": method.name,
        "method_args": method_args or {},
        "benchmark": benchmark.name,
        "benchmark_args": benchmark_args or {},
        "model": model_name,
        "model_args": model_args,
        "head": head,
        "seed": seed,
        "threads": torch.get_num_threads(),
    }
    for key, default in _LATER_TRAIN_DEFAULTS.items():  # as RunConfig.to_dict leaves them out
        if described[key] == default:
            del described[key]
    if own:
        described[runio.OWN_OBJECTS] = {
            k: own[k] for k in ("method", "benchmark", "model") if k in own
        }
    return described


def _resume_difference(
    trained: Any, run_config: dict[str, Any], legacy: dict[str, Any] | None
) -> str | None:
    """How the config a checkpoint was trained with differs from ``run_config``
    (:func:`runio.config_difference`). ``legacy`` (a run :func:`fit` described itself, not
    ``retain run``): its threads and its own objects may differ (:func:`_comparable`),
    and a checkpoint of an earlier version storing ``legacy`` (:func:`_fit_config`)
    resumes too."""
    differs = runio.config_difference(trained, run_config)
    if differs is None or legacy is None or not isinstance(trained, dict):
        return differs
    if runio.config_difference(trained, legacy) is None:
        return None
    return runio.config_difference(*_comparable(trained, run_config))


def _comparable(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict, dict]:
    """Two configs :func:`fit` described, less what a resume from Python may change: torch's
    threads, and of a part that is an object of one's own on either side (``own_objects``:
    a subclass that crashes on purpose, a module that moved), its arguments and class; its
    name (method, benchmark) is still compared, as it always was."""
    own = set()
    for config in (a, b):
        listed = config.get(runio.OWN_OBJECTS)
        own |= set(listed) if isinstance(listed, dict) else set()
    drop = {"threads", runio.OWN_OBJECTS, *(f"{part}_args" for part in own)}
    if "model" in own:
        drop.add("model")

    def keep(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in drop}

    return keep(a), keep(b)


def _restarts(run_path: Path, run_config: dict[str, Any]) -> bool:
    """``fit(resume=True)`` in a folder with no checkpoint: True (start again from the
    beginning, saying so) when its ``config.yaml`` describes this run (stopped before its
    first checkpoint); the folder refused (:class:`~retain.engine.runio.RunFolderError`)
    when it holds results without a checkpoint or another run's config;
    ``FileNotFoundError`` when it holds no run."""
    if (run_path / runio.METRICS).is_file():
        raise runio.RunFolderError(
            f"cannot resume: {str(run_path)!r} holds {runio.METRICS} but no "
            f"{runio.CHECKPOINT}; move the folder away or use another run_dir"
        )
    cfg = run_path / runio.CONFIG
    if not cfg.is_file():
        raise FileNotFoundError(f"no checkpoint to resume in {run_path}")
    import yaml

    from retain import config_yaml

    try:
        stored = config_yaml.load(cfg.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        stored = None
    if not isinstance(stored, dict):
        raise runio.RunFolderError(f"cannot resume: {cfg} is unreadable; use another run_dir")
    differs = runio.config_difference(*_comparable(stored, run_config), "asked")
    if differs is not None:
        differs = differs.replace(" in the checkpoint,", " there,")
        raise runio.RunFolderError(
            f"cannot resume: {cfg} holds the config of another run ({differs}); use another run_dir"
        )
    runio._warn(
        f"{run_path} was stopped before its first checkpoint; starting it again from the beginning"
    )
    return True


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's ``random`` (model initialisation, dropout, methods)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Trainer:
    """Owns the optimisation of one run. Methods that write their own procedure
    (``Method.train_task``) run its phases with :meth:`train_epochs` or :meth:`run_epoch`
    (optimisers from :meth:`make_optimizer`)."""

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        benchmark: Benchmark,
        config: TrainConfig,
        generator: torch.Generator,
        events: runio.EventLog,
        progress: bool,
        checkpoint_fn=None,
    ) -> None:
        self.model = model
        self.method = method
        self.benchmark = benchmark
        self.config = config
        self.generator = generator
        self.events = events
        self.progress = progress
        self._checkpoint_fn = checkpoint_fn
        self._resume: dict[str, Any] | None = None
        from retain.data.augment import make_augment
        from retain.engine.device import grad_scaler, resolve_device

        self.device = distributed.local_device(resolve_device(config.device))
        self.augment = make_augment(config.augment)
        self.scaler = grad_scaler(config.amp, self.device)

    @classmethod
    def standalone(
        cls,
        model: nn.Module,
        method: Method,
        generator: torch.Generator | None = None,
        *,
        benchmark: Benchmark | None = None,
        config: TrainConfig | None = None,
        **overrides: Any,
    ) -> Trainer:
        """A trainer outside :func:`fit` (no run folder, no checkpoints, on the model's
        device): for a loop of one's own that runs a method with a procedure of its own
        (``method.own_procedure``: Eidetic, PackNet, Joint) by
        ``method.train_task(task, trainer)``, and for a method's own API driven with a user's
        optimiser (``Eidetic.fit_task``).

        Args:
            model: the model ``method`` was set up with.
            method: the method whose hooks the trainer's epochs drive.
            generator: draws the batches (default: seeded with 0).
            benchmark: the task sequence (Joint trains on its tasks so far, Eidetic's router
                on all of them); ``None`` for ``Eidetic.fit_task``.
            config: the optimiser and epochs of ``train_task`` (``fit``'s
                :class:`TrainConfig`); keyword ``overrides`` replace single fields
                (``epochs=2, lr=0.01, batch_size=64``). ``device`` is the model's.
        """
        device = next(model.parameters()).device
        fields = {**asdict(config or TrainConfig()), **overrides, "device": str(device)}
        settings = TrainConfig(**fields)
        settings.validate()
        return cls(
            model,
            method,
            benchmark,  # type: ignore[arg-type]
            settings,
            generator if generator is not None else torch.Generator().manual_seed(0),
            runio.EventLog(None),
            progress=False,
        )

    # ------------------------------------------------------------------ optimisation
    def make_optimizer(self, params) -> torch.optim.Optimizer:
        c = self.config
        lr = c.lr
        params = [p for p in params if p.requires_grad]
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=c.weight_decay)
        return torch.optim.AdamW(params, lr=lr, weight_decay=c.weight_decay)

    def make_scheduler(self, optimizer: torch.optim.Optimizer):
        c = self.config
        if not c.lr_milestones:
            return None
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, c.lr_milestones, c.lr_gamma)

    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        """Training inputs on the run's device, with its batched augmentation (if any)."""
        x = to_device(x, self.device)
        return x if self.augment is None else self.augment(x, self.generator)

    def run_epoch(
        self,
        task: Task,
        optimizer: torch.optim.Optimizer,
        bar=None,
        *,
        batches: Iterable[Batch] | None = None,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        metric: Callable[[torch.Tensor, Batch], None] | None = None,
        epoch: int = 0,
    ) -> float:
        """One epoch of SGD steps; returns the mean training loss. ``epoch`` (its number in
        the task or phase) only names where a divergence happened.

        By default the batches are ``method.batches(task, ...)`` and the loss is
        ``method.loss(batch, task)``. A phase of a method's own procedure may pass other
        ``batches`` (e.g. Eidetic's router data) and a ``forward``: the loss is then the
        cross-entropy of ``forward(batch.x)`` against ``batch.y``, and ``metric(logits, batch)``
        sees the detached logits after every step (training accuracy).

        Data-parallel (several processes, :mod:`retain.engine.distributed`): every process
        draws the same batch, trains on its shard with the loss weighted by the shard's share,
        and the gradients are summed over processes before ``method.after_backward``.

        Divergence is checked at the epoch's end, with no per-step host sync: the running
        (float64) loss sum turns non-finite at the first non-finite loss and stays so, and a
        device counter of the steps while it was finite gives that step's index. The epoch's
        end reads the sum (as it always did) and checks the weights once; either non-finite
        raises :class:`Diverged`."""
        method, model = self.method, self.model
        model.train()
        device, amp, scaler = self.device, self.config.amp, self.scaler
        wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        total = torch.zeros((), dtype=wide, device=device)
        finite_steps = torch.zeros((), dtype=torch.long, device=device)
        count = steps = 0
        parallel = distributed.active()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if batches is None:
            batches = method.batches(task, self.config.batch_size, self.generator)
        for batch in batches:
            n = len(batch)
            x = self.augmented(batch.x)  # the whole batch: the generator stays in step
            if x is not batch.x:
                batch = dataclasses.replace(
                    batch, x=x, y=to_device(batch.y, device), task_ids=batch.task_ids.to(device)
                )
            share = 1.0
            if parallel:
                lo, hi = distributed.shard_bounds(n)
                share = (hi - lo) / n  # 0: fewer rows than processes; the loss is kept at 0
                if hi > lo:
                    batch = _rows(batch, lo, hi)
            with autocast(amp, device):
                if forward is None:
                    loss = method.loss(batch, task)
                else:
                    logits = forward(batch.x)
                    loss = F.cross_entropy(logits, batch.y)
            optimizer.zero_grad(set_to_none=True)
            scaled = loss * share if parallel else loss
            (scaled if scaler is None else scaler.scale(scaled)).backward()
            if parallel:
                distributed.reduce_gradients(params)
            method.after_backward(batch, task)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            method.after_step(batch, task)
            if metric is not None:
                metric(logits.detach(), batch)
            if parallel:
                distributed.broadcast_batchnorm(model)
            if share > 0:
                total += loss.detach() * len(batch)
                count += len(batch)
            finite_steps += torch.isfinite(total)  # on the device: no host sync per step
            steps += 1
            if bar is not None:
                bar.update(n)
        if parallel:
            distributed.sync_rng(device)
            sums = distributed.sum_over_processes(torch.stack([total, total.new_tensor(count)]))
            total, count = sums[0], int(sums[1])
        task_id = None if task is None else task.id
        mean = float(total) / max(count, 1)
        if not math.isfinite(mean):
            raise Diverged(task_id, epoch, int(finite_steps))
        if params and not bool(torch.stack([p.detach().isfinite().all() for p in params]).all()):
            raise Diverged(task_id, epoch, steps - 1, "weights")
        return mean

    def progress_bar(self, task: Task, total: int | None = None) -> tqdm:
        """The bar of one task's training (samples; ``total=None`` for a procedure whose
        length is not known in advance); disabled unless the run shows progress."""
        return tqdm(
            total=total,
            desc=f"task {task.id + 1}/{self.benchmark.n_tasks if self.benchmark else '?'}",
            unit="sample",
            unit_scale=True,
            leave=False,
            disable=not self.progress,
        )

    def train_epochs(
        self,
        task: Task,
        epochs: int | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> None:
        """The default procedure: ``epochs`` epochs of SGD on ``task`` with a fresh optimiser.

        A method's own procedure may pass a fresh ``optimizer`` of its own and its epoch
        ``scheduler`` (``step()`` after every epoch; GDumb's warm restarts) instead of the
        run's: a checkpoint inside the task stores both, and a resumed run loads them."""
        epochs = self.config.epochs if epochs is None else epochs
        if optimizer is None:
            optimizer = self.make_optimizer(self.method.trainable_parameters(task))
            scheduler = self.make_scheduler(optimizer)
        start = 0
        if self._resume is not None:  # continue a task that was checkpointed mid-way
            optimizer.load_state_dict(self._resume["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(self._resume["scheduler"])
            start = self._resume["epoch"]
            self._resume = None
        bar = self.progress_bar(task, (epochs - start) * len(task.y_train))
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            self.method.before_epoch(task, epoch)
            loss = self.run_epoch(task, optimizer, bar, epoch=epoch)
            if scheduler is not None:
                scheduler.step()
            bar.set_postfix(loss=f"{loss:.4f}")
            self.events.append(
                {
                    "task": task.id,
                    "epoch": epoch,
                    "loss": loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": round(time.perf_counter() - t0, 4),
                }
            )
            every = self.config.checkpoint_every
            if every and (epoch + 1) % every == 0 and epoch + 1 < epochs and self._checkpoint_fn:
                self._checkpoint_fn(
                    task_done=False,
                    epoch=epoch + 1,
                    optimizer=optimizer.state_dict(),
                    scheduler=None if scheduler is None else scheduler.state_dict(),
                )
        bar.close()

    # ------------------------------------------------------------------ evaluation
    @torch.inference_mode()
    def evaluate_task(self, task: Task, upto: int) -> tuple[float, float]:
        """(task-aware, task-agnostic) test accuracy on ``task``; task-agnostic predictions are
        over the heads of tasks ``< upto``."""
        self.model.eval()
        correct_aw = torch.zeros((), dtype=torch.long, device=self.device)
        correct_ag = torch.zeros((), dtype=torch.long, device=self.device)
        offset = 0 if getattr(self.model, "shared_head", False) else task.class_offset
        rank, size = distributed.rank(), distributed.world_size()
        for i, (x, y) in enumerate(
            iterate_batches((task.x_test, task.y_test), self.config.eval_batch_size, shuffle=False)
        ):
            if i % size != rank:  # data-parallel: batches dealt round-robin
                continue
            x, y = to_device(x, self.device), to_device(y, self.device)
            with autocast(self.config.amp, self.device):
                aware, agnostic = self.method.predict_both(x, task.id, upto)
            correct_aw += (aware.argmax(1) == y).sum()
            if agnostic is not None:
                correct_ag += (agnostic.argmax(1) == y + offset).sum()
        correct = distributed.sum_over_processes(torch.stack([correct_aw, correct_ag]))
        correct_aw, correct_ag = correct[0], correct[1]
        n = len(task.y_test)
        agn = float(correct_ag) / n if self.method.task_agnostic else math.nan
        return float(correct_aw) / n, agn

    def evaluate_all(self, trained: int) -> tuple[list[float], list[float]]:
        """Accuracies on every task after ``trained`` tasks (0: the initial model)."""
        aware, agnostic = [], []
        for task in self.benchmark:
            a, g = self.evaluate_task(task, upto=max(trained, task.id + 1))
            aware.append(a)
            agnostic.append(g)
        return aware, agnostic


@dataclass
class RunProgress:
    """Where :func:`fit` was when a ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM as ``retain run``
    raises it) stopped it: the exception carries it as ``run_progress``, for a message that
    says what the folder holds and what is lost."""

    n_tasks: int = 0
    #: the task being trained or evaluated (0-based); None: before the first task's training
    task: int | None = None
    #: the last checkpoint written (or resumed from): ``task``, ``task_done`` and ``epoch``
    #: (epochs of ``task`` done in a checkpoint inside a task); None: none in this folder
    checkpoint: dict[str, Any] | None = None


_PROGRESS: contextvars.ContextVar[RunProgress | None] = contextvars.ContextVar(
    "retain_fit_progress", default=None
)


def _progress() -> RunProgress:
    return _PROGRESS.get() or RunProgress()


def _reports_interrupts(fn):
    """``fn`` (:func:`fit`) with its :class:`RunProgress` attached to a ``KeyboardInterrupt``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _PROGRESS.set(RunProgress())
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as e:
            e.run_progress = _PROGRESS.get()  # type: ignore[attr-defined]
            raise
        finally:
            _PROGRESS.reset(token)

    return wrapper


def _holds_run_folder(fn):
    """``fn`` (:func:`fit`) holding its ``run_dir`` when it owns it (given no ``run_config``,
    as from Python: ``retain run`` and the trials of ``compare`` and ``sweep`` take and check
    the folder themselves): the folder's lock (:func:`runio.claim_run_dir`, the one
    ``retain run`` takes) until it returns, and a new run (no ``resume``) refused in a folder
    that already holds one (:func:`runio.check_new_run_dir`), both before anything is
    written. Data-parallel, process 0 alone does this (the others write nothing)."""
    import contextlib
    import inspect

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        given = signature.bind(*args, **kwargs).arguments
        run_dir = given.get("run_dir")
        if run_dir is None or given.get("run_config") is not None:
            return fn(*args, **kwargs)
        if distributed.launched_rank() != 0:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as held:
            runio.claim_run_dir(held, Path(run_dir), option="run_dir")
            if not given.get("resume", False):
                runio.check_new_run_dir(Path(run_dir), "run_dir", "resume=True to continue it")
            return fn(*args, **kwargs)

    return wrapper


@_reports_interrupts
@_holds_run_folder
def fit(
    model: nn.Module,
    benchmark: Benchmark,
    method: Method,
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_task_end=None,
    run_config: dict[str, Any] | None = None,
    **overrides: Any,
) -> RunResult:
    """Train ``model`` on ``benchmark``'s tasks in order with ``method``; evaluate all tasks
    after every task.

    Args:
        model: a :class:`~retain.models.ContinualModel` (or any module with its interface),
            or a plain ``nn.Module`` of one's own, wrapped by
            :meth:`~retain.models.ContinualModel.wrap`: the whole module is the backbone,
            its feature size is found by one forward pass and per-task heads are added
            (trained in place: ``method.model.backbone`` is the module given).
        benchmark: the task sequence.
        method: a :class:`~retain.methods.Method`; ``method.setup`` is called here.
        config: training settings; keyword ``overrides`` replace single fields
            (``fit(..., epochs=5, lr=0.1)``).
        seed: seeds the batch order and the global RNGs (dropout, sampling in methods).
            Build the model after seeding (``retain.seed_everything``) to fix its init too.
        run_dir: if given, a run folder as ``retain run`` writes it: ``config.yaml`` and
            ``environment.json`` first (the format of ``retain run``, :func:`describe_run`),
            then ``metrics.json``, ``events.jsonl``, ``checkpoint.pt``, ``timings.json``
            (atomically), checkpointing at every task boundary. ``retain report`` reads it,
            ``retain run --resume`` continues it (not when the model, benchmark or method is
            an object of one's own: resume it here). The folder's lock (``.<name>.lock``
            beside it, the one ``retain run`` takes) is held until ``fit`` returns.
        resume: continue from ``run_dir/checkpoint.pt``; refused
            (:class:`~retain.engine.runio.CheckpointError`) if the checkpoint is damaged or was
            trained with another config. A folder stopped before its first checkpoint (its
            ``config.yaml`` this run's) starts again from the beginning.
        progress: show a tqdm bar (default: only when stderr is a terminal).
        on_task_end: optional callback ``(task_index, RunResult)`` after each task.
        run_config: the run's whole config as a plain dict (``RunConfig.to_dict()``, as
            ``retain run`` passes it), stored in every checkpoint and compared on resume; a
            caller passing it owns ``run_dir`` (``retain run`` and the trials of ``compare``
            and ``sweep`` write its ``config.yaml``, lock and check it). Default:
            :func:`describe_run`, and ``fit`` locks, checks and writes the folder itself.

    Raises:
        RunFolderError: (a ``ValueError``, before anything is written) ``run_dir`` already
            holds a run (``config.yaml``, ``metrics.json`` or ``checkpoint.pt``) and
            ``resume`` is not set, is not a folder, cannot be written, or another process
            holds its lock.
        Diverged: a non-finite training loss or non-finite weights (checked at every epoch's
            end, :meth:`Trainer.run_epoch`); ``run_dir`` then holds :data:`DIVERGED`, and
            its ``metrics.json`` the rows of the tasks before.
    """
    config = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    config.validate()
    if config.epochs != 1 and any(task.ordered for task in benchmark):
        raise ValueError(
            f"benchmark {benchmark.name!r} is a single-pass stream: epochs must be 1, "
            f"got {config.epochs}"
        )
    model = ContinualModel.wrap(model, benchmark)  # a plain module: the backbone, plus heads
    run_path = Path(run_dir) if run_dir is not None else None
    info = BenchmarkInfo(
        benchmark.n_tasks, benchmark.classes_per_task, tuple(benchmark.input_shape)
    )
    device = distributed.local_device(resolve_device(config.device))
    if distributed.requested_world_size() > 1 and not method.data_parallel:
        raise SetupError(
            f"method {method.name!r} cannot train data-parallel ({method.data_parallel_note}); "
            "run it in one process"
        )
    distributed.init_from_env(device)
    model.to(device)
    move_benchmark(benchmark, device)
    try:
        method.setup(model, info)
    except (ValueError, TypeError) as e:  # the method cannot run on this model or benchmark
        raise SetupError(str(e)) from e
    if distributed.active():
        distributed.broadcast_model(model)
    # data-parallel: every process reads a checkpoint to resume, process 0 alone writes
    out_path = run_path if distributed.rank() == 0 else None

    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    events = runio.EventLog(out_path / runio.EVENTS if out_path else None)
    aware = AccuracyMatrix(benchmark.n_tasks)
    agnostic = AccuracyMatrix(benchmark.n_tasks)
    result = RunResult(aware, agnostic, run_path)
    start_task, resume_mid = 0, None
    legacy = None  # given no run_config: fit describes the run and writes its config.yaml
    if run_config is None:
        legacy = _fit_config(config, seed, method, benchmark)
        run_config = describe_run(model, benchmark, method, config, seed)
        if resume and run_path is not None and not (run_path / runio.CHECKPOINT).exists():
            resume = not _restarts(run_path, run_config)

    def checkpoint(task_done: bool, task_index: int, **mid: Any) -> None:
        if out_path is None:
            return
        state = {
            "task": task_index,
            "task_done": task_done,
            "model": model.state_dict(),
            "method": method.state_dict(),
            "rng": _rng_state(generator),
            "n_events": len(events.events),
            "metrics": result.metrics(),
            "seconds_per_task": list(result.seconds_per_task),
            "config": run_config,
            **mid,
        }
        runio.save_torch(out_path / runio.CHECKPOINT, state)
        _progress().checkpoint = {"task": task_index, "task_done": task_done, **_epoch(mid)}

    if resume:
        if run_path is None or not (run_path / runio.CHECKPOINT).exists():
            raise FileNotFoundError(f"no checkpoint to resume in {run_path}")
        state = runio.load_torch(run_path / runio.CHECKPOINT)
        differs = _resume_difference(state.get("config"), run_config, legacy)
        if differs is not None:
            raise runio.CheckpointError(
                f"{run_path / runio.CHECKPOINT} was trained with another config ({differs})"
            )
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
        _set_rng_state(state["rng"], generator)
        events.load(state["n_events"])  # process 0's log (the others write none)
        for name, matrix in (("task_aware", aware), ("task_agnostic", agnostic)):
            saved = AccuracyMatrix.from_dict(state["metrics"][name])
            matrix.initial, matrix.rows = saved.initial, saved.rows
        result.seconds_per_task = list(state["seconds_per_task"])
        result.method_metrics = state["metrics"].get("method", {})
        start_task = state["task"] + 1 if state["task_done"] else state["task"]
        _progress().checkpoint = {"task": state["task"], "task_done": state["task_done"]}
        _progress().checkpoint.update(_epoch(state))
        if not state["task_done"]:
            resume_mid = state

    trainer = Trainer(
        model,
        method,
        benchmark,
        config,
        generator,
        events,
        progress=out_path is not None and (progress if progress is not None else _stderr_is_tty()),
    )

    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
        if legacy is not None:
            _write_run_files(out_path, run_config, seed, resume)
    if aware.initial is None:
        init_aw, init_ag = trainer.evaluate_all(trained=0)
        aware.set_initial(init_aw)
        agnostic.set_initial(init_ag)

    _progress().n_tasks = benchmark.n_tasks
    for task in benchmark.tasks[start_task:]:
        t0 = time.perf_counter()
        _progress().task = task.id
        trainer._checkpoint_fn = lambda task_done, _i=task.id, **mid: checkpoint(
            task_done, _i, **mid
        )
        if resume_mid is not None:
            trainer._resume = {k: resume_mid[k] for k in ("optimizer", "scheduler", "epoch")}
            resume_mid = None
            method.resume_task(task)
        else:
            method.before_task(task)
        try:
            method.train_task(task, trainer)
        except Diverged as e:  # mark the folder; its metrics.json rows stay valid
            if out_path is not None:
                runio.write_json(out_path / DIVERGED, e.record())
                e.run_dir = out_path
            raise
        method.after_task(task)
        row_aw, row_ag = trainer.evaluate_all(trained=task.id + 1)
        aware.add_row(row_aw)
        agnostic.add_row(row_ag)
        result.method_metrics = method.extra_metrics()
        result.seconds_per_task.append(round(time.perf_counter() - t0, 3))
        if out_path is not None:
            checkpoint(True, task.id)  # first: a row in metrics.json always has a checkpoint
            _write_results(out_path, result)
        if on_task_end is not None:
            on_task_end(task.id, result)
    if out_path is not None and start_task >= benchmark.n_tasks:
        _write_results(out_path, result)  # killed between the last checkpoint and metrics.json
    return result


def _epoch(state: dict[str, Any]) -> dict[str, Any]:
    return {"epoch": state["epoch"]} if "epoch" in state else {}


def _write_run_files(out_path: Path, run_config: dict[str, Any], seed: int, resume: bool) -> None:
    """What ``retain run`` writes into a run folder before training, for a run :func:`fit`
    described itself: ``config.yaml`` and ``environment.json`` (when starting, or missing in
    a folder written by an earlier version); a killed writer's temporaries removed (the
    folder's lock is held)."""
    runio.remove_stale_temps(out_path)
    if not resume or not (out_path / runio.CONFIG).exists():
        runio.write_yaml(out_path / runio.CONFIG, run_config)
    if not resume or not (out_path / runio.ENVIRONMENT).exists():
        threads = run_config.get("threads", torch.get_num_threads())
        runio.write_json(out_path / runio.ENVIRONMENT, runio.environment(seed, threads))


def _write_results(out_path: Path, result: RunResult) -> None:
    runio.write_json(out_path / runio.METRICS, result.metrics())
    runio.write_json(
        out_path / runio.TIMINGS,
        {"seconds_per_task": result.seconds_per_task, "peak_rss_mib": _peak_rss_mib()},
    )


def _rows(batch, lo: int, hi: int):
    """Rows ``[lo, hi)`` of every per-sample field of a batch."""
    return dataclasses.replace(
        batch, x=batch.x[lo:hi], y=batch.y[lo:hi], task_ids=batch.task_ids[lo:hi]
    )


def _stderr_is_tty() -> bool:
    import sys

    return sys.stderr.isatty()


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
