"""``--smoke``: any config shrunk to seconds, so CI can run every shipped config end to end.

The overlay (applied last, after the file, the flags and ``--set``) trains 1 epoch per task
without an lr schedule, caps the few method settings that multiply epochs (Eidetic's patience,
recovery epochs and pruning rounds), narrows the backbone (:data:`MODEL_CAPS`: the same layers,
fewer channels or units) and caps image sizes at 32 px (:data:`BENCHMARK_CAPS`). The benchmark
is built as configured - the same data path, the same class order and preprocessing - and then
cut to its first :data:`TASKS` tasks, each with :data:`TRAIN_PER_CLASS` training and
:data:`TEST_PER_CLASS` test samples of every class (the first ones in the task's order); a
boundary-free stream keeps :data:`STREAM` evenly spaced samples in stream order. A smoke run's
``config.yaml`` says ``smoke: true``; its numbers mean nothing.
"""

from __future__ import annotations

from typing import Any

import torch

TASKS = 3
TRAIN_PER_CLASS = 2
TEST_PER_CLASS = 1
STREAM = 120

#: top-level keys the overlay sets
OVERLAY: dict[str, Any] = {"epochs": 1, "lr_milestones": [], "checkpoint_every": 0}
#: per method, upper bounds of method_args
METHOD_CAPS: dict[str, dict[str, int]] = {
    "eidetic": {"patience": 1, "max_recovery_epochs": 1},
}
#: per method, lower bounds of method_args (Eidetic: big pruning steps, few pruning rounds)
METHOD_FLOORS: dict[str, dict[str, float]] = {"eidetic": {"step": 0.3}}
#: per backbone, upper bounds of its width options (the same layers, narrower)
MODEL_CAPS: dict[str, dict[str, int]] = {
    "resnet18": {"nf": 8},
    "reduced-resnet18": {"nf": 8},
    "alexnet": {"nhid": 64},
    "mlp": {"hidden": 64},
    "resnet50": {"nf": 4},
    "lenet": {"channels": 8, "hidden": 32},
    "lenet-large": {"channels": 8, "hidden": 32},
    "tinynet": {"channels": 16, "hidden": 32},
}
#: upper bounds of benchmark arguments, where the benchmark takes them (image size in pixels)
BENCHMARK_CAPS: dict[str, int] = {"size": 32}


def overlay(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a resolved dict of :class:`~retain.experiment.RunConfig` fields) with the
    smoke overlay applied."""
    out = {**config, **OVERLAY}
    method = out.get("method", "finetune")
    args = dict(out.get("method_args") or {})
    for key, cap in METHOD_CAPS.get(method, {}).items():
        args[key] = min(int(args.get(key, cap)), cap)
    for key, floor in METHOD_FLOORS.get(method, {}).items():
        args[key] = max(float(args.get(key, floor)), floor)
    out["method_args"] = args
    model_args = dict(out.get("model_args") or {})
    model = out.get("model", "mlp")
    for key, cap in MODEL_CAPS.get(model, {}).items():
        value = model_args.get(key, _default_option(model, key, cap))
        if isinstance(value, (list, tuple)):
            model_args[key] = [min(int(v), cap) for v in value]
        else:
            model_args[key] = min(int(value), cap)
    out["model_args"] = model_args
    from retain.data import BENCHMARKS, benchmark_parameters

    if out.get("benchmark") in BENCHMARKS:
        accepted = benchmark_parameters(out["benchmark"])
        bargs = dict(out.get("benchmark_args") or {})
        for key, cap in BENCHMARK_CAPS.items():
            if key in accepted and isinstance(accepted[key], int):
                bargs[key] = min(int(bargs.get(key, accepted[key])), cap)
        out["benchmark_args"] = bargs
    return out


def _default_option(model: str, key: str, fallback: Any) -> Any:
    """The default of option ``key`` of backbone ``model`` (``fallback`` if it has none), so a
    cap on a per-layer option (e.g. LeNet's ``channels=(20, 50)``) keeps its length."""
    import inspect

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
