"""`retain sweep`: the grid a sweep file describes, bad files refused in one line, sequential
runs, and a sweep on a local Ray killed halfway then run again: every trial finished exactly
once, with the numbers and the table of an uninterrupted sweep."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from retain.cli import main
from retain.executors import ExecutorError
from retain.report import build_tables, collect, markdown_table
from retain.sweep import expand, parse_spec


def test_expand_is_benchmarks_x_methods_x_grid_x_seeds():
    spec = parse_spec(
        {
            "seeds": [3, 7],
            "set": {"epochs": 2, "lr": 0.1},
            "grid": {"batch_size": [16, 32]},
            "benchmarks": {"split-digits": {"set": {"benchmark_args.n_tasks": 5}}},
            "methods": {"finetune": {}, "ewc": {"grid": {"method_args.lamb": [1, 10]}}},
        }
    )
    configs = expand(spec, {"lr": 0.05})
    assert len(configs) == 2 * 2 + 2 * 2 * 2  # finetune: batch x seeds; ewc: batch x lamb x seeds
    ewc = [c for c in configs if c.method == "ewc"]
    assert {(c.batch_size, c.method_args["lamb"], c.seed) for c in ewc} == {
        (b, lamb, s) for b in (16, 32) for lamb in (1, 10) for s in (3, 7)
    }
    assert all(c.epochs == 2 and c.lr == 0.05 for c in configs)  # --set wins over the file
    assert all(c.benchmark_args == {"n_tasks": 5} for c in configs)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"methods": ["finetune"]}, "names no benchmarks"),
        (
            {"benchmarks": ["split-digits"], "methods": ["finetune"], "sedes": 2},
            "unknown sweep key",
        ),
        ({"benchmarks": ["split-digits"], "methods": ["nope"]}, "unknown method 'nope'"),
        ({"benchmarks": ["nope"], "methods": ["finetune"]}, "unknown benchmark 'nope'"),
        ({"benchmarks": ["split-digits"], "methods": ["finetune"], "grid": {"lr": 0.1}}, "list"),
        ({"benchmarks": ["split-digits"], "methods": ["finetune"], "seeds": 0}, "at least 1"),
        (
            {"benchmarks": ["split-digits"], "methods": {"ewc": {"set": {"method_args.lamd": 1}}}},
            "has no argument 'lamd'",
        ),
        (
            {"benchmarks": ["split-digits"], "methods": ["finetune"], "grid": {"lr": [0.1, 0.1]}},
            "same trial twice",
        ),
    ],
)
def test_bad_sweep_files_are_one_line_and_exit_2(tmp_path, capsys, data, expected):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--workers", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0 and expected in err, err
    assert not out.exists()


def test_invalid_yaml_and_missing_file(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("methods: [unclosed\n")
    assert main(["sweep", str(spec), "--workers", "1"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "none.yaml"), "--workers", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_without_ray_the_sweep_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    import retain.executors

    monkeypatch.setattr(retain.executors, "ray_available", lambda: False)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"benchmarks": ["split-digits"], "methods": ["finetune"]}))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2  # default: Ray
    err = capsys.readouterr().err
    assert "pip install 'retain-cl[sweep]'" in err and "--workers 1" in err
    with pytest.raises(ExecutorError, match="pip install"):
        _ray_import_fails(monkeypatch)


def _ray_import_fails(monkeypatch):
    """The Ray executor itself refuses with the hint when ``import ray`` fails."""
    import builtins

    from retain.executors import RayExecutor

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with RayExecutor(workers=1):
        pass


def test_sequential_sweep_writes_run_folders_and_the_summary(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    data = {
        "out": str(tmp_path / "out"),
        "seeds": 2,
        "set": {"batch_size": 32},
        "benchmarks": ["split-digits"],
        "methods": {"finetune": {}, "ewc": {"set": {"method_args.lamb": 10}}},
    }
    spec.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(spec), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "| finetune | 2 |" in captured.out and "| ewc | 2 |" in captured.out
    out = tmp_path / "out"
    trials = sorted(p for p in out.iterdir() if p.name.startswith("split-digits-"))
    assert len(trials) == 4
    assert all((t / "metrics.json").is_file() for t in trials)
    assert (out / "report" / "report.html").is_file()


# ---------------------------------------------------------------------- Ray, killed halfway
SPEC = {
    "seeds": 2,
    "set": {"batch_size": 32},
    "benchmarks": ["split-mnist5k"],
    # finetune's trials are short and run first; ewc's are longer, so that the kill below
    # finds trials finished, trials half done and (often) trials not started
    "methods": {"finetune": {"set": {"epochs": 1}}, "ewc": {"set": {"epochs": 4}}},
}


def _rows(trial: Path) -> int:
    try:
        return len(json.loads((trial / "metrics.json").read_text())["task_aware"]["rows"])
    except (OSError, ValueError, KeyError):
        return 0


def _history(out: Path) -> dict[str, list[dict]]:
    try:
        return json.loads((out / "trials.json").read_text())["trials"]
    except (OSError, ValueError):
        return {}


def _wait_for_lock(path: Path, timeout: float) -> None:
    if not path.exists():
        return
    with open(path) as handle:
        deadline = time.time() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.time() < deadline, f"{path} still held {timeout} s after the kill"
                time.sleep(0.05)


def _kill_session(sid: int, timeout: float = 30) -> None:
    """SIGKILL every process of session `sid`, as a closed terminal or a job scheduler would,
    until none is left alive. Ray starts each worker in a process group of its own, so killing
    the driver's group alone leaves the workers running until they notice their raylet is
    gone (time enough for a fast worker to finish its trial)."""
    deadline = time.time() + timeout
    while True:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:  # after the command name: state, ppid, pgrp, session
                state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
            except OSError:  # the process ended meanwhile
                continue
            if int(session) == sid and state != "Z":
                alive.append(int(stat.parent.name))
        if not alive:
            return
        assert time.time() < deadline, f"processes {alive} survive SIGKILL"
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _table(out: Path) -> str:
    (table,) = build_tables(collect([out]).runs)
    return markdown_table(table, with_time=False)


@pytest.mark.slow
def test_ray_sweep_killed_halfway_and_rerun_finishes_every_trial_once(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    reference, out = tmp_path / "reference", tmp_path / "ray"
    # the uninterrupted sweep, one trial after another in this process
    assert main(["sweep", str(spec), "--workers", "1", "--out", str(reference)]) == 0
    names = sorted(p.name for p in reference.iterdir() if p.name.startswith("split-"))
    assert len(names) == 4

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "retain.cli", "sweep", str(spec), "--workers", "2"]
    cmd += ["--out", str(out)]
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            rows = [_rows(out / n) for n in names]
            recorded = sum(h[-1]["status"] == "ok" for h in _history(out).values())
            # a trial at most 3 of 5 tasks in cannot finish in the moment before the kill
            if recorded >= 1 and any(0 < r <= 3 for r in rows):
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            _kill_session(proc.pid)  # the driver, its raylet and its workers
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    for name in names:  # the killed sweep's workers stop with it: their trial locks go free
        _wait_for_lock(out / f".{name}.lock", timeout=60)
    rows = {n: _rows(out / n) for n in names}
    finished = {n for n, r in rows.items() if r == 5}
    halfway = {n for n, r in rows.items() if 0 < r < 5}
    assert finished and halfway, rows
    stamps = {n: (out / n / "metrics.json").stat().st_mtime_ns for n in finished}

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    history = _history(out)
    for name in names:
        actions = [(e["action"], e["status"]) for e in history[name]]
        trained = [a for a in actions if a[0] in ("start", "resume") and a[1] == "ok"]
        assert len(trained) <= 1, (name, actions)  # never trained to the end twice
        last = actions[-1]
        if name in finished:  # skipped, not touched
            assert last == ("done", "ok"), (name, actions)
            assert (out / name / "metrics.json").stat().st_mtime_ns == stamps[name]
        elif name in halfway:  # continued from its checkpoint
            assert last == ("resume", "ok"), (name, actions)
        else:
            assert last == ("start", "ok"), (name, actions)
        assert (out / name / "metrics.json").read_bytes() == (
            reference / name / "metrics.json"
        ).read_bytes()
    assert _table(out) == _table(reference)
    assert (
        "| ewc (epochs=4) | 2 |" in rerun.stdout and "| finetune (epochs=1) | 2 |" in rerun.stdout
    )


def test_a_trial_locked_by_another_process_waits_for_it(tmp_path):
    """Two writers never share a run folder: a trial whose lock is held waits, and starts
    only once the lock is free."""
    import threading

    from retain.experiment import resolve
    from retain.trials import Trial, run_trial

    trial = Trial.under(tmp_path, resolve(flags={"benchmark": "split-digits"}))
    results = []
    with open(tmp_path / f".{trial.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: results.append(run_trial(trial)))
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not trial.run_dir.exists()
        fcntl.flock(handle, fcntl.LOCK_UN)
    worker.join(timeout=120)
    assert [(r.action, r.status) for r in results] == [("start", "ok")]
