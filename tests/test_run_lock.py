"""One writer per run folder, folders stopped before their first checkpoint, interrupts
(issue 18, items 4 and 5)."""

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retain.cli import Terminated, main
from retain.engine import runio
from retain.sweep import StatusLog
from retain.trials import TrialResult, folder_lock, lock_path

FAST = ["--benchmark", "split-digits", "--set", "batch_size=32", "--quiet"]
RUN = ["run", "--method", "finetune", *FAST, "--epochs", "2", "--set", "model_args.hidden=[16]"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


@pytest.fixture
def reference(tmp_path_factory) -> bytes:
    """metrics.json of the uninterrupted run of RUN."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return (out / runio.METRICS).read_bytes()


# ----------------------------------------------------------------- two writers, one folder
def test_second_run_on_a_held_folder_is_refused_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    with folder_lock(lock_path(out)):  # a first `retain run --out run` in its start-up
        assert main([*RUN, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "is in use by another retain process" in err and str(out) in err
    assert not out.exists()


def test_second_resume_on_a_held_folder_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    (out).mkdir()
    (out / runio.CONFIG).write_text("method: finetune\nbenchmark: split-digits\n")
    before = _files(out)
    with folder_lock(lock_path(out)):
        assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "is in use by another retain process" in capsys.readouterr().err
    assert _files(out) == before


def test_second_process_is_refused_while_the_first_holds_the_folder(tmp_path):
    """The real thing: another process (the CLI as a subprocess) while this one holds the lock,
    i.e. while a first writer is in its start-up."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "retain.cli", *RUN, "--out", str(out)]
    with folder_lock(lock_path(out)):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "is in use by another retain process" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_status_logs_of_two_processes_keep_every_entry(tmp_path):
    """Two compares on one --out, each holding trials.json as it was when it started."""
    path = tmp_path / "trials.json"
    first, second = StatusLog(path), StatusLog(path)
    for i in range(3):
        first.record(TrialResult(f"a{i}", f"/x/a{i}", "start", "ok"))
        second.record(TrialResult(f"b{i}", f"/x/b{i}", "start", "ok"))
    names = set(json.loads(path.read_text())["trials"])
    assert names == {"a0", "a1", "a2", "b0", "b1", "b2"}


def test_two_concurrent_compares_on_one_out_keep_every_trial(tmp_path):
    out = tmp_path / "cmp"
    base = [sys.executable, "-m", "retain.cli", "compare", "--benchmark", "split-digits"]
    base += ["--seeds", "0,1", "--out", str(out), "--set", "model_args.hidden=[16]"]
    procs = [
        subprocess.Popen([*base, "--methods", m], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for m in ("finetune", "joint")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 4
    assert sorted(n.split("-")[2] for n in trials) == ["finetune"] * 2 + ["joint"] * 2


# ----------------------------------------------------------------- stuck folders
def test_folder_killed_before_its_first_checkpoint_resumes_from_the_start(
    tmp_path, capsys, reference
):
    src = tmp_path / "src"
    assert main([*RUN, "--out", str(src)]) == 0
    out = tmp_path / "killed"  # as a SIGKILL in task 1 leaves it
    out.mkdir()
    for name in (runio.CONFIG, runio.ENVIRONMENT):
        (out / name).write_bytes((src / name).read_bytes())
    (out / runio.EVENTS).write_text((src / runio.EVENTS).read_text().splitlines()[0] + "\n")
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"{out} was stopped before its first checkpoint; starting it again" in err
    assert (out / runio.METRICS).read_bytes() == reference
    assert _losses(out) == _losses(src)  # the stale event of the killed try is gone


def _losses(run: Path) -> list:
    lines = (run / runio.EVENTS).read_text().splitlines()
    return [(e["task"], e["epoch"], e["loss"]) for e in map(json.loads, lines)]


def test_folder_whose_first_checkpoint_could_not_be_written_resumes(
    tmp_path, monkeypatch, reference
):
    out = tmp_path / "run"
    real = runio.save_torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runio, "save_torch", disk_full)
    with contextlib.suppress(OSError):  # a one-line error, or (before issue 18) a traceback
        assert main([*RUN, "--out", str(out)]) != 0
    assert (out / runio.CONFIG).is_file() and not (out / runio.CHECKPOINT).exists()
    monkeypatch.setattr(runio, "save_torch", real)
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert (out / runio.METRICS).read_bytes() == reference


# ----------------------------------------------------------------- interrupts
def _interrupt_at_epoch(monkeypatch, n: int, exc=KeyboardInterrupt) -> None:
    """Raise ``exc`` in the ``n``-th epoch (1-based) of the run."""
    from retain.engine.trainer import Trainer

    real, calls = Trainer.run_epoch, []

    def run_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise exc()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()[-1]
    return err


def test_interrupt_after_a_checkpoint_says_what_it_holds(tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "run"
    _interrupt_at_epoch(monkeypatch, 4)  # task 2's second epoch: task 1 is checkpointed
    assert main([*RUN, "--out", str(out)]) == 130
    line = _one_line(capsys)
    assert "Traceback" not in line and "intact" not in line
    assert line.startswith("retain: interrupted (SIGINT) in task 2/5;")
    assert f"{out / runio.CHECKPOINT} holds 1 task done" in line
    assert "the training of task 2 since then is lost" in line
    assert line.endswith(f"continue with: retain run --resume {out}")
    monkeypatch.undo()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert (out / runio.METRICS).read_bytes() == reference


def test_interrupt_before_any_checkpoint_says_so(tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "run"
    _interrupt_at_epoch(monkeypatch, 2, Terminated)  # SIGTERM in task 1
    assert main([*RUN, "--out", str(out)]) == 143
    line = _one_line(capsys)
    assert line.startswith("retain: interrupted (SIGTERM) in task 1/5;")
    assert f"{out} holds no checkpoint yet: all its training so far is lost" in line
    assert line.endswith(f"continue with: retain run --resume {out}")
    assert not (out / runio.CHECKPOINT).exists()
    monkeypatch.undo()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0  # the command it printed
    assert (out / runio.METRICS).read_bytes() == reference


def test_interrupt_with_a_checkpoint_inside_the_task(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _interrupt_at_epoch(monkeypatch, 6)  # task 2's third epoch, after two in-task checkpoints
    argv = [*RUN, "--epochs", "3", "--set", "checkpoint_every=1", "--out", str(out)]
    assert main(argv) == 130
    line = _one_line(capsys)
    assert "in task 2/5" in line and "holds 1 task done and 2 epochs of task 2" in line
    assert "checkpoint_every=N" not in line  # it is set already


def test_sigterm_to_a_real_run(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "retain.cli", *RUN, "--epochs", "500", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / runio.EVENTS).exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "retain: interrupted (SIGTERM) in task 1/5;" in err
    assert f"continue with: retain run --resume {out}" in err
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    with folder_lock(lock_path(out), blocking=False):  # free again once it has exited
        pass
