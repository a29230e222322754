"""The command line: run folders, errors as one line with exit code 2, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retain.cli import main

FAST = ["--benchmark", "split-digits", "--set", "batch_size=32", "--quiet"]
RUN = ["run", "--method", "finetune"]  # a run names its method and benchmark


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.count("\n") == 0, err
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--method", "nope"], "unknown method 'nope'; valid: "),
        (["--benchmark", "nope"], "unknown benchmark 'nope'"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--set", "lrr=0.1"], "unknown key 'lrr'"),
        (["--set", "lr=fast"], "lr must be a number"),
        (["--set", "epochs=0"], "epochs must be at least 1"),
        (["--set", "optimizer=rmsprop"], "unknown optimizer 'rmsprop'"),
        (["--set", "method_args.lamb=3"], "has no argument 'lamb'"),
        (["--set", "model_args.hiden=[3]"], "hiden"),
        (["--set", "benchmark_args.n_tasks=4"], "n_tasks"),
        (["--set", "noequals"], "--set expects key=value"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
        (["--resume", "/nonexistent/run"], "cannot resume"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    code = main([*RUN, *FAST, "--out", str(out), *argv])
    assert code == 2
    assert expected in _error_line(capsys)
    assert not (out / "metrics.json").exists()


def test_missing_dataset_says_how_to_get_it(tmp_path, capsys):
    argv = [*RUN, "--benchmark", "split-fmnist", "--set", f"benchmark_args.root={tmp_path}"]
    assert main([*argv, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "apt-get install dataset-fashion-mnist" in _error_line(capsys)


def test_invalid_yaml_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: [unclosed\n")
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "not valid YAML" in _error_line(capsys)


def test_run_writes_the_run_folder_and_prints_the_matrix(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*RUN, *FAST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "task-aware accuracy" in printed and "task-agnostic accuracy" in printed
    assert "acc" in printed and "bwt" in printed and "fwt" in printed
    for name in (
        "config.yaml",
        "metrics.json",
        "events.jsonl",
        "checkpoint.pt",
        "environment.json",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["task_aware"]["rows"]) == 5
    env = json.loads((out / "environment.json").read_text())
    assert env["seed"] == 0 and env["threads"] == 1


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*RUN, *FAST, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main([*RUN, *FAST, "--out", str(out), "--set", "lr=0.5"]) == 2
    assert "already holds a run" in _error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_with_another_config_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*RUN, *FAST, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--method", "joint"]) == 2
    assert "holds a config for another run" in _error_line(capsys)
    # the same options are accepted, and a finished run stays as it was
    before = (out / "metrics.json").read_bytes()
    assert main(["run", "--resume", str(out), "--benchmark", "split-digits", "--quiet"]) == 0
    assert (out / "metrics.json").read_bytes() == before


def test_same_seed_gives_byte_identical_metrics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    argv = [*RUN, *FAST, "--set", "model_args.dropout=0.2", "--epochs", "2"]
    assert main([*argv, "--out", str(a)]) == 0
    assert main([*argv, "--out", str(b)]) == 0
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("finetune", "joint", "one", "split-fmnist", "permuted-fmnist", "mlp", "alexnet"):
        assert name in out


def test_kill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    """SIGKILL a real `retain run` as soon as its first checkpoint exists, resume it, and
    compare metrics.json with an uninterrupted run: byte for byte."""
    argv = [*FAST, "--epochs", "12", "--set", "checkpoint_every=3", "--set", "momentum=0.9"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "retain.cli", *RUN]
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([*cmd, *argv, "--out", str(full)], check=True, env=env, capture_output=True)

    proc = subprocess.Popen(
        [*cmd, *argv, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _rows(killed)
    assert done < 5, "the run finished before it could be killed; make it longer"
    resume = [*cmd, "--resume", str(killed), "--quiet"]
    subprocess.run(resume, check=True, env=env, capture_output=True)
    assert (full / "metrics.json").read_bytes() == (killed / "metrics.json").read_bytes()


def _rows(run: Path) -> int:
    path = run / "metrics.json"
    return len(json.loads(path.read_text())["task_aware"]["rows"]) if path.exists() else 0


def test_nested_set_keys_build_nested_mappings():
    from retain.experiment import apply, parse_set, resolve

    cfg: dict = {}
    apply(cfg, parse_set(["method_args.base_args.lamb=5000", "method_args.base_args.x=[1, 2]"]), "")
    assert cfg["method_args"] == {"base_args": {"lamb": 5000, "x": [1, 2]}}
    sets = ["method=scrollnet", "method_args.base=ewc", "method_args.base_args.lamb=5000"]
    assert resolve(None, None, sets).method_args == {"base": "ewc", "base_args": {"lamb": 5000}}


def test_method_refusing_the_model_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--set",
            "method=wsn",
            "--set",
            "benchmark=split-digits",
            "--set",
            "model=reduced-resnet18",
            "--set",
            "model_args.nf=4",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("retain: error: wsn:") and "BatchNorm" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not out.exists()
