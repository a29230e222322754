"""Errors that used to end in a traceback end in one line on stderr and a non-zero exit, with
nothing already written lost: a config file that is not UTF-8 (run, compare, sweep, resume), a
garbled events.jsonl on resume, a seed torch cannot take, an --out that cannot be written, a
model too large to allocate, a disk full while a run folder's file is written. And the log of
a run: events.jsonl is appended line by line, holds strict JSON, survives a partial last line
and is cut back to its checkpoint on resume; temporaries left by a killed writer are removed."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import pytest
import yaml

from retain.cli import main
from retain.engine import runio

FAST = ["--benchmark", "split-digits", "--set", "batch_size=32", "--quiet"]
RUN = ["run", "--method", "finetune"]  # a run names its method and benchmark
NOT_UTF8 = b"method: fin\xe9tune\n"


def _announce(line: str) -> bool:
    """The line `retain run` prints before training (not an error)."""
    return (" -> " in line and line.startswith("retain: ")) or "tasks already done" in line


def _one_error(capsys, *, allow_announce: bool = False) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if allow_announce:
        lines = [ln for ln in lines if not _announce(ln)]
    assert len(lines) == 1, err
    assert lines[0].startswith("retain: error: "), lines[0]
    return lines[0]


def _finished_run(tmp_path: Path, capsys, name: str = "run") -> Path:
    out = tmp_path / name
    assert main([*RUN, *FAST, "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ------------------------------------------------------------------ a config file not UTF-8
@pytest.mark.parametrize("command", ["run", "compare", "sweep"])
def test_a_config_file_not_utf8_is_one_line(tmp_path, capsys, command):
    cfg = tmp_path / "c.yaml"
    if command == "sweep":
        cfg.write_bytes(b"benchmarks: [split-digits]\nmethods: [fin\xe9tune]\n")
        argv = ["sweep", str(cfg), "--workers", "1", "--out", str(tmp_path / "o")]
    else:
        cfg.write_bytes(NOT_UTF8)
        argv = [command, "--config", str(cfg), "--out", str(tmp_path / "o")]
        argv += ["--benchmark", "split-digits"]
        argv += ["--methods", "finetune", "--seeds", "1"] if command == "compare" else []
    assert main(argv) == 2
    line = _one_error(capsys)
    assert "is not UTF-8 text (byte 0xe9 at offset" in line and "c.yaml" in line
    assert not (tmp_path / "o").exists()


def test_resume_with_a_config_yaml_not_utf8_is_one_line(tmp_path, capsys):
    run = _finished_run(tmp_path, capsys)
    (run / "config.yaml").write_bytes(NOT_UTF8)
    before = _snapshot(run)
    assert main(["run", "--resume", str(run)]) == 2
    assert "config.yaml' is not UTF-8 text" in _one_error(capsys)
    assert _snapshot(run) == before


def test_compare_over_a_trial_with_a_config_yaml_not_utf8_is_one_line(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--benchmark", "split-digits", "--methods", "finetune", "--seeds", "1"]
    argv += ["--set", "batch_size=32", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    (trial,) = [p for p in out.iterdir() if p.name.startswith("split-digits-")]
    (trial / "config.yaml").write_bytes(NOT_UTF8)
    assert main(argv) == 2
    assert "unreadable config.yaml" in _one_error(capsys)


# ---------------------------------------------------------------------- events.jsonl, resume
def test_a_garbled_events_jsonl_on_resume_is_one_line_and_kept(tmp_path, capsys):
    run = _finished_run(tmp_path, capsys)
    (run / "events.jsonl").write_bytes(b'{"epoch": 0, "lo\n\x00\x01 not json\n')
    before = _snapshot(run)
    assert main(["run", "--resume", str(run)]) == 2
    line = _one_error(capsys, allow_announce=True)
    assert "events.jsonl: line 1 is not a JSON object (garbled)" in line
    assert _snapshot(run) == before  # nothing rewritten


def test_a_truncated_events_jsonl_is_resumed_with_one_warning(tmp_path, capsys):
    run = _finished_run(tmp_path, capsys)
    lines = (run / "events.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 5
    (run / "events.jsonl").write_text("".join(lines[:2]))
    assert main(["run", "--resume", str(run)]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(err) == 1 and "holds 2 of the 5 events its checkpoint counts" in err[0], err
    assert (run / "events.jsonl").read_text() == "".join(lines[:2])


def test_a_partial_last_line_is_dropped_and_resume_cuts_to_the_checkpoint(tmp_path, capsys):
    run = _finished_run(tmp_path, capsys)
    good = (run / "events.jsonl").read_text()
    # events written after the last checkpoint, the last one cut short by a kill
    extra = json.dumps({"epoch": 1, "loss": 0.5, "task": 4}) + "\n" + '{"epoch": 2, "lo'
    (run / "events.jsonl").write_text(good + extra)
    assert main(["run", "--resume", str(run)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert (run / "events.jsonl").read_text() == good  # rewritten once, to the 5 kept


def test_events_jsonl_is_appended_not_rewritten(tmp_path, capsys, monkeypatch):
    whole = []
    real = runio.atomic_write_text

    def counting(path, text):
        if Path(path).name == runio.EVENTS:
            whole.append(text.count("\n"))
        real(path, text)

    monkeypatch.setattr(runio, "atomic_write_text", counting)
    run = _finished_run(tmp_path, capsys)
    assert len((run / "events.jsonl").read_text().splitlines()) == 5
    assert whole == [1]  # the whole file written once (the first event), then appended


def test_event_log_appends_in_place(tmp_path):
    path = tmp_path / "events.jsonl"
    log = runio.EventLog(path)
    log.append({"epoch": 0, "loss": 1.0})
    inode, first = path.stat().st_ino, path.read_bytes()
    for epoch in range(1, 20):
        log.append({"epoch": epoch, "loss": 1.0 / (epoch + 1)})
        assert path.stat().st_ino == inode  # the same file, not a rewritten copy
        assert path.read_bytes().startswith(first)
    assert len(path.read_text().splitlines()) == 20
    resumed = runio.EventLog(path)
    resumed.load(7)  # resume: cut back to the checkpoint's 7 events, once
    assert len(path.read_text().splitlines()) == 7 and len(resumed.events) == 7
    inode = path.stat().st_ino
    resumed.append({"epoch": 7, "loss": 0.1})
    assert path.stat().st_ino == inode and len(path.read_text().splitlines()) == 8


def test_non_finite_values_are_written_as_json_and_read_back(tmp_path):
    path = tmp_path / "events.jsonl"
    log = runio.EventLog(path)
    log.append({"epoch": 0, "loss": math.nan, "grad": [math.inf, -math.inf, 1.5]})
    log.append({"epoch": 1, "loss": math.inf})

    def strict(name):
        raise ValueError(f"bare {name} in events.jsonl")

    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=strict)  # no NaN / Infinity tokens
    back = runio.EventLog(path)
    back.load(2)
    assert math.isnan(back.events[0]["loss"]) and back.events[0]["grad"] == [
        math.inf,
        -math.inf,
        1.5,
    ]
    assert back.events[1]["loss"] == math.inf


# ----------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", ["99999999999999999999", str(2**64), str(-(2**63) - 1)])
def test_a_seed_torch_cannot_take_is_one_line(tmp_path, capsys, seed):
    out = tmp_path / "r"
    assert main([*RUN, *FAST, "--seed", seed, "--out", str(out)]) == 2
    line = _one_error(capsys)
    assert f"seed must be an integer from {-(2**63)} to {2**64 - 1}" in line and seed in line
    assert not out.exists()


# ------------------------------------------------------------------- --out not writable
@pytest.mark.parametrize("command", ["run", "compare", "report"])
def test_an_out_that_cannot_be_written_is_one_line_before_training(tmp_path, capsys, command):
    out = "/proc/retain-test/out" if command == "run" else "/proc/retain-test"
    if command == "run":
        argv = [*RUN, *FAST, "--out", out]
    elif command == "compare":
        argv = ["compare", "--benchmark", "split-digits", "--methods", "finetune", "--seeds"]
        argv += ["1", "--out", out]
    else:
        argv = ["report", str(_finished_run(tmp_path, capsys)), "--out", out]
    assert main(argv) == 2
    line = _one_error(capsys)  # one line only: nothing was announced or trained
    assert "retain-test" in line and "cannot write" in line


def test_check_writable_leaves_no_trace(tmp_path):
    runio.check_writable(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(runio.RunFileError, match="cannot write in"):
        runio.check_writable(Path("/proc/retain-test/x"))


# --------------------------------------------------------------------- a model too large
def test_a_model_too_large_to_allocate_is_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    argv = [*RUN, *FAST, "--set", "model_args.hidden=[1000000000000]", "--out", str(out)]
    assert main(argv) == 2
    line = _one_error(capsys)
    assert "model 'mlp' with model_args {'hidden': [1000000000000]} is too large" in line
    assert "bytes" in line
    assert not (out / "config.yaml").exists()


# ------------------------------------------------------------------------------ disk full
def _disk_full_on(monkeypatch, name: str, nth: int) -> None:
    """The ``nth`` write of ``name`` goes to /dev/full: the kernel's own ENOSPC."""
    real = runio._temp_beside
    seen = {"n": 0}

    def temp_beside(path):
        fd, tmp = real(path)
        if Path(path).name == name:
            seen["n"] += 1
            if seen["n"] == nth:
                full = os.open("/dev/full", os.O_WRONLY)
                os.dup2(full, fd)
                os.close(full)
        return fd, tmp

    monkeypatch.setattr(runio, "_temp_beside", temp_beside)


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_disk_full_writing_the_checkpoint_is_one_line_with_its_size(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    _disk_full_on(monkeypatch, runio.CHECKPOINT, nth=2)  # at the end of task 2
    assert main([*RUN, *FAST, "--out", str(out)]) == 2
    line = _one_error(capsys, allow_announce=True)
    assert f"cannot write {out / runio.CHECKPOINT}: no space left on the device" in line
    assert "(it needs about 0.8 MB, " in line and " free)" in line, line
    state = runio.load_torch(out / runio.CHECKPOINT)  # the previous checkpoint is intact
    assert state["task"] == 0 and state["task_done"]
    assert len(json.loads((out / "metrics.json").read_text())["task_aware"]["rows"]) == 1
    assert _temps(out) == []


def test_disk_full_writing_metrics_keeps_the_previous_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    _disk_full_on(monkeypatch, runio.METRICS, nth=3)
    assert main([*RUN, *FAST, "--out", str(out)]) == 2
    line = _one_error(capsys, allow_announce=True)
    assert f"cannot write {out / runio.METRICS}: no space left on the device" in line
    assert len(json.loads((out / "metrics.json").read_text())["task_aware"]["rows"]) == 2
    assert _temps(out) == []


def test_disk_full_appending_an_event_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "r"
    real = os.write

    def write(fd, data):
        if data.startswith(b'{"epoch"') and b'"task": 2' in data:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(runio.os, "write", write)
    assert main([*RUN, *FAST, "--out", str(out)]) == 2
    line = _one_error(capsys, allow_announce=True)
    assert f"cannot write {out / runio.EVENTS}: no space left on the device" in line
    assert len((out / runio.EVENTS).read_text().splitlines()) == 2


# ----------------------------------------------------------------- temporaries of a kill
def test_temporaries_left_by_a_kill_are_removed_on_start_and_resume(tmp_path, capsys):
    ours = [".checkpoint.pt.k2j_9x0a.tmp", ".metrics.json.abcdefgh.tmp"]
    others = ["notes.tmp", ".checkpoint.pt.tmp", "data.abcdefgh.tmp", ".x.ABCDEFGH.tmp"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ours + others:
        (fresh / name).write_bytes(b"x" * 100)
    assert main([*RUN, *FAST, "--out", str(fresh)]) == 0
    assert sorted(_temps(fresh)) == sorted(n for n in others if n.endswith(".tmp"))
    for name in ours:
        (fresh / name).write_bytes(b"x" * 100)
    assert main(["run", "--resume", str(fresh)]) == 0
    assert sorted(_temps(fresh)) == sorted(n for n in others if n.endswith(".tmp"))


def test_remove_stale_temps_matches_our_pattern_only(tmp_path):
    fd, tmp = runio._temp_beside(tmp_path / "metrics.json")
    os.close(fd)
    keep = tmp_path / "keep.tmp"
    keep.write_text("x")
    assert runio.remove_stale_temps(tmp_path) == [Path(tmp)]
    assert not Path(tmp).exists() and keep.exists()


# -------------------------------------------------------------------------------- Ray
def test_ray_is_started_without_dashboard_and_agents(monkeypatch):
    ray = pytest.importorskip("ray")
    import retain.executors
    from retain.executors import RayExecutor

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(retain.executors, "_start_reaper", lambda: None)
    with RayExecutor(workers=2):
        pass
    assert seen["include_dashboard"] is False
    assert seen["num_cpus"] == 2


DRIVER = """
import subprocess, sys, time
from retain.executors import _start_reaper
reaper = _start_reaper()
code = "import subprocess, time; subprocess.Popen(['sleep', '120']); time.sleep(120)"
agent = subprocess.Popen(["ray::FakeAgent", "-c", code], executable=sys.executable)
other = subprocess.Popen(["sleep", "120"])
print(reaper.pid, agent.pid, other.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the reaper reads /proc")
def test_a_killed_driver_takes_its_ray_processes_with_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    reaper, agent, other = map(int, proc.stdout.readline().split())
    time.sleep(2.5)  # the reaper has seen the agent and its child
    children = [int(c) for c in Path(f"/proc/{agent}/task/{agent}/children").read_text().split()]
    assert children and _alive(agent)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and (_alive(agent) or any(map(_alive, children))):
        time.sleep(0.1)
    try:
        assert not _alive(agent) and not any(map(_alive, children))  # Ray's, and below it
        assert _alive(other)  # not Ray's: left alone
    finally:
        for pid in (agent, other, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    while time.time() < deadline and _alive(reaper):
        time.sleep(0.1)
    assert not _alive(reaper)  # done once the driver is gone


def test_yaml_helpers_unchanged(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"lr": 0.1}))
    from retain.experiment import load_yaml

    assert load_yaml(path) == {"lr": 0.1}
