"""``--smoke``: any config shrunk to seconds, so CI can run every shipped config end to end.

The overlay (applied last by :func:`retain.experiment.resolve`, after the file, the flags, a
trial's own keys and ``--set``) trains 1 epoch per task without an lr schedule, bounds the few
method settings that multiply epochs or rounds (each method class declares its own
:attr:`~retain.methods.Method.smoke_caps` and ``smoke_floors``), narrows the backbone (the caps
each backbone is registered with, :func:`retain.models.registry.register_model`: the same layers,
fewer channels or units) and caps image sizes at 32 px (:data:`BENCHMARK_CAPS`). The benchmark
is built as configured - the same data path, the same class order and preprocessing - and then
cut to its first :data:`TASKS` tasks, each with :data:`TRAIN_PER_CLASS` training and
:data:`TEST_PER_CLASS` test samples of every class (the first ones in the task's order); a
boundary-free stream keeps :data:`STREAM` evenly spaced samples in stream order. A smoke run's
``config.yaml`` says ``smoke: true``; its numbers mean nothing.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

TASKS = 3
TRAIN_PER_CLASS = 2
TEST_PER_CLASS = 1
STREAM = 120

#: top-level keys the overlay sets
OVERLAY: dict[str, Any] = {"epochs": 1, "lr_milestones": [], "checkpoint_every": 0}
#: upper bounds of benchmark arguments, where the benchmark takes them (image size in pixels)
BENCHMARK_CAPS: dict[str, int] = {"size": 32}


def overlay(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a resolved dict of :class:`~retain.experiment.RunConfig` fields) with the
    smoke overlay applied."""
    out = {**config, **OVERLAY}
    out["method_args"] = _method_args(
        out.get("method", "finetune"), dict(out.get("method_args") or {})
    )
    out["model_args"] = _model_args(out.get("model", "mlp"), dict(out.get("model_args") or {}))
    from retain.data import BENCHMARKS, benchmark_parameters

    if out.get("benchmark") in BENCHMARKS:
        accepted = benchmark_parameters(out["benchmark"])
        bargs = dict(out.get("benchmark_args") or {})
        for key, cap in BENCHMARK_CAPS.items():
            if key in accepted and isinstance(accepted[key], int):
                bargs[key] = min(int(bargs.get(key, accepted[key])), cap)
        out["benchmark_args"] = bargs
    return out


def _method_args(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` of ``method`` within the bounds its class declares (each value converted to
    its bound's type). A method that wraps another by name (``base`` and ``base_args``
    arguments) has the wrapped method's bounds applied to ``base_args``."""
    from retain.methods import REGISTRY

    cls = REGISTRY.get(method)
    if cls is None:  # an unknown name is reported by the config's validation
        return args
    for key, cap in cls.smoke_caps.items():
        args[key] = min(type(cap)(args.get(key, cap)), cap)
    for key, floor in cls.smoke_floors.items():
        args[key] = max(type(floor)(args.get(key, floor)), floor)
    params = inspect.signature(cls.__init__).parameters
    if "base" in params and "base_args" in params:
        base = args.get("base", params["base"].default)
        given = dict(args.get("base_args") or {})
        if isinstance(base, str):
            bounded = _method_args(base, dict(given))
            if bounded != given:
                args["base_args"] = bounded
    return args


def _model_args(model: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` of backbone ``model`` within the smoke caps it is registered with."""
    from retain.models.registry import MODEL_SMOKE

    for key, cap in MODEL_SMOKE.get(model, {}).items():
        value = args.get(key, _default_option(model, key, cap))
        if isinstance(value, (list, tuple)):
            args[key] = [min(int(v), cap) for v in value]
        else:
            args[key] = min(int(value), cap)
    return args


def _default_option(model: str, key: str, fallback: Any) -> Any:
    """The default of option ``key`` of backbone ``model`` (``fallback`` if it has none), so a
    cap on a per-layer option (e.g. ``channels=(20, 50)``) keeps its length."""
    from retain.models.registry import MODELS

    if model not in MODELS:
        return fallback
    param = inspect.signature(MODELS[model]).parameters.get(key)
    if param is None or param.default is inspect.Parameter.empty:
        return fallback
    return param.default


def _first_per_class(y: torch.Tensor, k: int) -> torch.Tensor:
    keep = [torch.nonzero(y == c).reshape(-1)[:k] for c in y.unique()]
    return torch.cat(keep).sort().values


def shrink(benchmark):
    """The benchmark cut as described in the module docstring (a new Benchmark; the tasks'
    tensors are indexed, so lazy images stay lazy until read)."""
    from retain.data.benchmark import Benchmark, Task

    tasks = []
    for task in benchmark.tasks[:TASKS]:
        if task.ordered:
            step = max(1, len(task.y_train) // STREAM)
            itr = torch.arange(0, len(task.y_train), step)
        else:
            itr = _first_per_class(task.y_train, TRAIN_PER_CLASS)
        ite = _first_per_class(task.y_test, TEST_PER_CLASS)
        tasks.append(
            Task(
                task.id,
                task.x_train[itr],
                task.y_train[itr],
                task.x_test[ite],
                task.y_test[ite],
                list(task.classes),
                task.class_offset,
                task.name,
                task.ordered,
            )
        )
    info = {**benchmark.info, "smoke": {"tasks": len(tasks), "of": benchmark.n_tasks}}
    return Benchmark(benchmark.name, tasks, tuple(benchmark.input_shape), info)
