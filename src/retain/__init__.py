"""retain: continual learning for PyTorch.

A whole run (README.md shows the command line)::

    import retain
    bench = retain.get_benchmark("split-fmnist")
    retain.seed_everything(0)
    model = retain.build_model("mlp", bench.input_shape, bench.classes_per_task)
    result = retain.fit(model, bench, retain.make_method("finetune"), epochs=2, lr=0.01)
    print(result.task_agnostic.summary())

``fit`` also takes a plain ``nn.Module`` of one's own (``retain.ContinualModel.wrap``: the
module is the backbone, per-task heads are added). A loop of one's own drives a method's hooks
after ``method.setup(model, bench)`` (the benchmark, or a ``retain.BenchmarkInfo``: the sizes a
method may know before it starts); methods with ``method.own_procedure`` (Eidetic, PackNet,
Joint) train a task by ``method.train_task(task, retain.Trainer.standalone(...))``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "fit": "retain.engine",
    "TrainConfig": "retain.engine",
    "seed_everything": "retain.engine",
    "Benchmark": "retain.data",
    "Task": "retain.data",
    "get_benchmark": "retain.data",
    "benchmark_from_tensors": "retain.data",
    "benchmark_from_datasets": "retain.data",
    "build_model": "retain.models",
    "ContinualModel": "retain.models",
    "make_method": "retain.methods",
    "Method": "retain.methods",
    "BenchmarkInfo": "retain.methods",
    "Trainer": "retain.engine",
    "AccuracyMatrix": "retain.metrics",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:  # lazy: `import retain` does not import torch
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retain' has no attribute {name!r}")
