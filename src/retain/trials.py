"""Trials: one config run in its own ordinary run folder, started, resumed or skipped.

``retain compare`` and ``retain sweep`` describe every trial by a fully resolved
:class:`~retain.experiment.RunConfig`. Its folder is named after the benchmark, method, seed and
a hash of the rest of the config (:func:`trial_name`), so running the same grid again finds
the same folders: a finished trial (``metrics.json`` with every task) is skipped, an
interrupted one (a ``checkpoint.pt``) is resumed from its last checkpoint, and a folder killed
before its first checkpoint is started again. A folder whose ``config.yaml`` describes another
run is never touched (:class:`TrialConflict`). A trial whose training diverged (its folder
holds ``diverged.json``) has status ``diverged`` and is not run again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retain import config_yaml
from retain.engine import runio
from retain.engine.runio import FolderBusy as FolderBusy  # the lock of a run folder
from retain.engine.runio import folder_lock as folder_lock
from retain.engine.runio import lock_path as lock_path
from retain.engine.trainer import DIVERGED as DIVERGED_FILE
from retain.engine.trainer import Diverged
from retain.experiment import RunConfig

DONE, RESUME, START = "done", "resume", "start"
#: a trial's state and status when its training diverged (:class:`~retain.engine.Diverged`)
DIVERGED = "diverged"


class TrialConflict(Exception):
    """A trial folder that holds another run (or an unreadable config)."""


def config_hash(config: RunConfig) -> str:
    """8 hex digits identifying everything in ``config`` but the seed."""
    d = {k: v for k, v in config.to_dict().items() if k != "seed"}
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def trial_name(config: RunConfig) -> str:
    """``<benchmark>-<method>-seed<seed>-<hash>``: readable, and unique per config."""
    return f"{config.benchmark}-{config.method}-seed{config.seed}-{config_hash(config)}"


@dataclass
class Trial:
    """A config and the run folder it is trained in."""

    config: RunConfig
    run_dir: Path

    @classmethod
    def under(cls, root: Path, config: RunConfig) -> Trial:
        return cls(config, Path(root) / trial_name(config))

    @property
    def name(self) -> str:
        return self.run_dir.name


@dataclass
class TrialResult:
    """What happened to a trial: ``action`` (done: skipped as finished, resume, start) and
    ``status`` (ok, failed or diverged, with ``error``), with the run's metrics when it
    finished."""

    name: str
    run_dir: str
    action: str
    status: str
    error: str = ""
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def tasks_done(run_dir: Path) -> tuple[int, int] | None:
    path = run_dir / runio.METRICS
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())["task_aware"]
        return len(m["rows"]), int(m["n_tasks"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trial_state(trial: Trial) -> str:
    """:data:`DONE`, :data:`RESUME` or :data:`START` for ``trial``'s folder as it is now;
    raises :class:`TrialConflict` if the folder holds another run."""
    run_dir = trial.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise TrialConflict(f"{run_dir} exists and is not a folder")
    cfg_file = run_dir / runio.CONFIG
    if not cfg_file.is_file():
        return START
    try:
        stored = config_yaml.load(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise TrialConflict(f"{run_dir}: unreadable {runio.CONFIG}; move the folder away") from None
    if stored != trial.config.to_dict():
        raise TrialConflict(f"{run_dir} holds the config of another run; move it away")
    if (run_dir / DIVERGED_FILE).is_file():
        return DIVERGED
    done = tasks_done(run_dir)
    if done is not None and done[0] == done[1]:
        return DONE
    if (run_dir / runio.CHECKPOINT).is_file():
        return RESUME
    return START


def execute(
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    progress: bool | None = False,
    on_built: Callable[[Any], None] | None = None,
):
    """Build and train ``config`` in ``run_dir`` (``resume``: from its checkpoint); write the
    run folder's files, then the method's own (:meth:`~retain.methods.Method.write_artifacts`).
    Returns the :class:`~retain.engine.RunResult`. ``on_built`` is called with the benchmark
    before training (to announce the run).

    Errors in the config or data raise :class:`~retain.experiment.ConfigError`."""
    import torch

    from retain.data import DataError
    from retain.engine import SetupError, distributed, fit
    from retain.experiment import ConfigError, build

    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        benchmark, model, method = build(config)
    except DataError as e:
        raise ConfigError(str(e)) from None
    if on_built is not None:
        on_built(benchmark)
    writer = distributed.launched_rank() == 0  # data-parallel: process 0 writes the folder
    created = writer and not run_dir.exists()
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        runio.remove_stale_temps(run_dir)  # left by a killed writer (the folder's lock is held)
    written = []
    if writer and not resume:  # a folder started again keeps its files if setup refuses
        written = [
            p for p in (run_dir / runio.CONFIG, run_dir / runio.ENVIRONMENT) if not p.exists()
        ]
        runio.write_yaml(run_dir / runio.CONFIG, config.to_dict())
        runio.write_json(
            run_dir / runio.ENVIRONMENT, runio.environment(config.seed, config.threads)
        )
    try:
        result = fit(
            model,
            benchmark,
            method,
            config.train_config(),
            seed=config.seed,
            run_dir=run_dir,
            resume=resume,
            progress=progress,
            run_config=config.to_dict(),
        )
    except SetupError as e:  # refused before training: leave no half-made run folder behind
        for path in written:
            path.unlink(missing_ok=True)
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise ConfigError(str(e)) from None
    if writer:
        method.write_artifacts(run_dir)
    return result


@contextmanager
def trial_lock(trial: Trial) -> Iterator[None]:
    """Hold an exclusive lock on ``trial`` (``.<name>.lock`` beside its folder, see
    :func:`lock_path`) while it runs, so that two processes never write one run folder: a
    second one (a sweep run again while a worker of the killed one is still finishing) waits,
    then finds the trial's new state. ``retain run`` takes the same lock, without waiting."""
    with folder_lock(lock_path(trial.run_dir)):
        yield


def run_trial(trial: Trial) -> TrialResult:
    """Skip, resume or start ``trial`` (under :func:`trial_lock`); never raises for a failing
    trial (the error is in the result), so that one bad trial does not stop the others."""
    with trial_lock(trial):
        return _run_trial(trial)


def _run_trial(trial: Trial) -> TrialResult:
    t0 = time.perf_counter()
    action = START
    try:
        action = trial_state(trial)
        if action == DIVERGED:
            raise Diverged.from_record(json.loads((trial.run_dir / DIVERGED_FILE).read_text()))
        if action == DONE:
            metrics = json.loads((trial.run_dir / runio.METRICS).read_text())
        else:
            metrics = execute(trial.config, trial.run_dir, resume=action == RESUME).metrics()
    except Diverged as e:  # a result, not a failure: shown as diverged, not retried
        return TrialResult(
            trial.name,
            str(trial.run_dir),
            action,
            DIVERGED,
            error=str(e),
            seconds=round(time.perf_counter() - t0, 3),
        )
    except Exception as e:  # reported per trial: the others go on
        first = (str(e).splitlines() or [""])[0]
        return TrialResult(
            trial.name,
            str(trial.run_dir),
            action,
            "failed",
            error=f"{e.__class__.__name__}: {first}",
            seconds=round(time.perf_counter() - t0, 3),
        )
    return TrialResult(
        trial.name,
        str(trial.run_dir),
        action,
        "ok",
        seconds=round(time.perf_counter() - t0, 3),
        metrics=metrics,
    )
