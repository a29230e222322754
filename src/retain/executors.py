"""Where trials run: in this process one after another, or as Ray tasks.

:func:`make_executor` gives a :class:`Sequential` executor for ``workers=1`` (and no address)
and a :class:`RayExecutor` otherwise: an embedded local Ray with ``workers`` CPUs, or the Ray
cluster at ``address``. Both are context managers (Ray is started on enter and stopped on exit
when the executor started it) with ``run(trials, on_result)``, which reports every
:class:`~retain.trials.TrialResult` as it arrives. Ray is optional: ``pip install
'retain-cl[sweep]'``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from retain.trials import Trial, TrialResult, run_trial

RAY_HINT = (
    "Ray is not installed: `pip install 'retain-cl[sweep]'` (or 'ray[default]') to run trials in "
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


#: run by :func:`_start_reaper` in a process of its own: until the driver (argv[1]) ends (its
#: pipe closes), note once a second the Ray processes below it (raylet, GCS, agents, workers:
#: a command line in a ``ray`` folder or ``ray::...``) and everything below those; then
#: SIGKILL the ones still alive (same pid, same start time). Ray's own agents wait 60 s for
#: the dead GCS (to publish the raylet's death) before they exit.
_REAPER = r"""
import os, select, signal, sys

driver, me = int(sys.argv[1]), os.getpid()
seen = {}

def stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), fields[19]  # ppid, start time

def is_ray(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return cmd.startswith(b"ray::") or b"/ray/" in cmd

def scan():
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                procs[int(entry)] = stat(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    grew = True
    while grew:
        grew = False
        for pid, (ppid, start) in procs.items():
            if pid not in seen and (ppid in seen or (ppid == driver and is_ray(pid))):
                seen[pid] = start
                grew = True

try:
    while True:
        scan()
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
except BaseException:
    pass
for pid, start in seen.items():
    try:
        if stat(pid)[1] == start:
            os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError, ValueError):
        pass
"""


def _start_reaper():
    """Start the reaper of the embedded Ray about to be started (Linux; None elsewhere).
    Closing its stdin (this process ending, killed or not) sets it off."""
    import subprocess
    import sys

    if not os.path.isdir("/proc"):
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _REAPER, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives a kill of the driver's process group or session
    )


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
        self._reaper: Any = None

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
            if not self.address:  # a killed driver takes its embedded Ray's agents with it
                self._reaper = _start_reaper()
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
        if self._reaper is not None:
            self._reaper.stdin.close()  # what ray.shutdown left, if anything
            self._reaper.wait()
            self._reaper = None

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
