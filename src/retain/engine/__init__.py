"""The engine: :func:`fit` runs a method over a benchmark's tasks."""

from retain.engine.trainer import (
    RunResult,
    SetupError,
    TrainConfig,
    Trainer,
    fit,
    seed_everything,
)

__all__ = ["RunResult", "SetupError", "TrainConfig", "Trainer", "fit", "seed_everything"]
