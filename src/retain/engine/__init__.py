"""The engine: :func:`fit` runs a method over a benchmark's tasks."""

from retain.engine.trainer import (
    DIVERGED,
    Diverged,
    RunResult,
    SetupError,
    TrainConfig,
    Trainer,
    fit,
    seed_everything,
)

__all__ = [
    "DIVERGED",
    "Diverged",
    "RunResult",
    "SetupError",
    "TrainConfig",
    "Trainer",
    "fit",
    "seed_everything",
]
