"""The engine: :func:`fit` runs a method over a benchmark's tasks."""

from retain.engine.runio import CheckpointError, RunFolderError
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
    "CheckpointError",
    "Diverged",
    "RunFolderError",
    "RunResult",
    "SetupError",
    "TrainConfig",
    "Trainer",
    "fit",
    "seed_everything",
]
