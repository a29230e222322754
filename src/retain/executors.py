"""Where trials run: in this process one after another, or as Ray tasks.

:func:`make_executor` gives a :class:`Sequential` executor for ``workers=1`` (and no address)
and a :class:`RayExecutor` otherwise: an embedded local Ray with ``workers`` CPUs, or the Ray
cluster at ``address``. Both are context managers (Ray is started on enter and stopped on exit
when the executor started it) with ``run(trials, on_result)``, which reports every
:class:`~retain.trials.TrialResult` as it arrives. Ray is optional: ``pip install
'retain[sweep]'``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from retain.trials import Trial, TrialResult, run_trial

RAY_HINT = (
    "Ray is not installed: `pip install 'retain[sweep]'` (or 'ray[default]') to run trials in "
    "parallel or on a cluster, or use --workers 1 to run them one after another here"
)
Reporter = Callable[[TrialResult], None]


class ExecutorError(RuntimeError):
    """Ray missing or unreachable; the message is one line meant for the user."""


class Sequential:
    """Every trial in this process, one after another."""

    def __enter__(self) -> Sequential:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, trials: list[Trial], on_result: Reporter) -> None:
        for trial in trials:
            on_result(run_trial(trial))


_WATCHING = False


def _exit_with_parent(interval: float = 0.5) -> None:
    """In a Ray worker: exit as soon as the process that started it (the raylet) is gone, so
    that killing a sweep (its driver and, with an embedded Ray, the raylet) also stops its
    trials instead of leaving them to finish unseen. Runs in a daemon thread."""
    import threading

    global _WATCHING
    if _WATCHING:  # workers are reused: one watcher each
        return
    _WATCHING = True
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="retain-exit-with-parent").start()


def _ray_trial(trial: Trial) -> TrialResult:
    """What a Ray worker runs: :func:`~retain.trials.run_trial`, stopping with its raylet."""
    _exit_with_parent()
    return run_trial(trial)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class RayExecutor:
    """Every trial as a Ray task (one CPU per torch thread of its config).

    Without ``address`` an embedded local Ray with ``workers`` CPUs (default: all) is started
    on enter and stopped on exit; with it, the running cluster at ``address`` is joined (the
    trial folders must then be on a filesystem every node sees, and retain installed on every
    node). An already initialised Ray (``ray.init`` by the caller) is used as it is.
    """

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.workers = workers
        self.address = address
        self._own = False

    def __enter__(self) -> RayExecutor:
        try:
            import ray
        except ImportError:
            raise ExecutorError(RAY_HINT) from None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            try:
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:
                    ray.init(num_cpus=self.workers or os.cpu_count() or 1, **kwargs)
            except ConnectionError as e:
                first = (str(e).splitlines() or [""])[0]
                raise ExecutorError(f"cannot reach Ray at {self.address!r}: {first}") from None
            self._own = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._own:
            import ray

            ray.shutdown()
            self._own = False

    def run(self, trials: list[Trial], on_result: Reporter) -> None:
        import ray

        remote = ray.remote(max_retries=0)(_ray_trial)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        pending = {
            remote.options(num_cpus=min(t.config.threads, cpus)).remote(t): t for t in trials
        }
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            trial = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # the worker died (memory, signal): report, go on
                first = (str(e).splitlines() or [""])[0]
                result = TrialResult(
                    trial.name, str(trial.run_dir), "?", "failed", f"{type(e).__name__}: {first}"
                )
            on_result(result)


Executor = Sequential | RayExecutor


def make_executor(workers: int | None = 1, address: str | None = None) -> Executor:
    """:class:`Sequential` for one worker and no address, else :class:`RayExecutor`."""
    if workers == 1 and not address:
        return Sequential()
    return RayExecutor(workers, address)
