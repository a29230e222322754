"""`retain compare`: a grid of methods x seeds as ordinary run folders, resumable, with the
table printed and the report written; bad input is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import retain.engine
from retain.cli import main

FAST = ["--benchmark", "split-digits", "--set", "batch_size=32"]


def _trial_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name.startswith("split-digits-"))


def _history(out: Path) -> dict[str, list[dict]]:
    return json.loads((out / "trials.json").read_text())["trials"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    return err


def test_compare_runs_the_grid_prints_the_table_and_skips_finished_trials(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *FAST, "--methods", "finetune,one", "--seeds", "2", "--out", str(out)]
    assert main([*argv, "--note", "reduced setting"]) == 0
    captured = capsys.readouterr()
    assert "reduced setting" in captured.out
    assert "| finetune | 2 |" in captured.out and "| one | 2 |" in captured.out
    trials = _trial_dirs(out)
    assert len(trials) == 4
    for trial in trials:  # ordinary run folders
        for name in ("config.yaml", "metrics.json", "checkpoint.pt", "environment.json"):
            assert (trial / name).is_file()
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.html").is_file()
    before = {t.name: (t / "metrics.json").stat().st_mtime_ns for t in trials}

    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().err
    assert {t.name: (t / "metrics.json").stat().st_mtime_ns for t in trials} == before
    history = _history(out)
    assert sorted(history) == sorted(before)
    assert all([e["action"] for e in h] == ["start", "done"] for h in history.values())


def test_interrupted_compare_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    argv = ["compare", *FAST, "--methods", "finetune", "--seeds", "2", "--epochs", "2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*argv, "--out", str(full)]) == 0

    real_fit = retain.engine.fit
    calls = []

    def interrupted_fit(*args, **kwargs):
        def stop(task_index, result):
            if task_index == 2:  # Ctrl-C after the third task of the first trial
                raise KeyboardInterrupt

        calls.append(1)
        return real_fit(*args, **kwargs, on_task_end=stop)

    monkeypatch.setattr(retain.engine, "fit", interrupted_fit)
    assert main([*argv, "--out", str(cut)]) == 130
    monkeypatch.undo()
    assert len(calls) == 1
    (first,) = _trial_dirs(cut)
    assert len(json.loads((first / "metrics.json").read_text())["task_aware"]["rows"]) == 3

    capsys.readouterr()
    assert main([*argv, "--out", str(cut)]) == 0
    err = capsys.readouterr().err
    assert "resumed" in err and "trained" in err
    for a, b in zip(_trial_dirs(full), _trial_dirs(cut), strict=True):
        assert a.name == b.name
        assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()


def test_a_failing_trial_is_reported_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *FAST, "--methods", "finetune,one", "--seeds", "1", "--out", str(out)]
    # a backbone argument only the model builder rejects: the trial fails when it is built
    assert main([*argv, "--set", "one:model_args.hidden=[-3]"]) == 1
    captured = capsys.readouterr()
    assert "trial failed" in captured.err and "hidden" in captured.err
    assert "| finetune | 1 |" in captured.out and "| one " not in captured.out
    statuses = {k: h[-1]["status"] for k, h in _history(out).items()}
    assert sorted(statuses.values()) == ["failed", "ok"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--methods", "finetune,nope"], "unknown method 'nope'"),
        (["--methods", "finetune", "--set", "lrr=1"], "unknown key 'lrr'"),
        (["--methods", "finetune", "--set", "ewc:method_args.lamb=1"], "not one of --methods"),
        (["--methods", "ewc", "--set", "ewc:method_args.lamd=1"], "has no argument 'lamd'"),
        (["--methods", "finetune", "--seeds", "0"], "--seeds must be at least 1"),
        (["--methods", "finetune", "--seeds", "a,b"], "--seeds must be"),
        (["--methods", "finetune,finetune"], "lists a method twice"),
        (["--methods", "finetune", "--seeds", "2", "--set", "seed=1"], "makes trials identical"),
        (["--methods", "finetune", "--config", "/nonexistent.yaml"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, expected):
    out = tmp_path / "cmp"
    assert main(["compare", *FAST, "--out", str(out), *extra]) == 2
    assert expected in _error_line(capsys)
    assert not out.exists()


def test_unknown_benchmark_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--benchmark", "nope", "--methods", "finetune", "--out", str(out)]) == 2
    assert "unknown benchmark 'nope'" in _error_line(capsys)
    assert not out.exists()


def test_a_folder_holding_another_run_is_never_touched(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *FAST, "--methods", "finetune", "--seeds", "1", "--out", str(out)]
    assert main(argv) == 0
    (trial,) = _trial_dirs(out)
    cfg = trial / "config.yaml"
    cfg.write_text(cfg.read_text().replace("lr: 0.01", "lr: 0.5"))
    before = {p.name: p.read_bytes() for p in trial.iterdir()}
    capsys.readouterr()
    assert main(argv) == 2
    assert "holds the config of another run" in _error_line(capsys)
    assert {p.name: p.read_bytes() for p in trial.iterdir()} == before


def test_workers_without_ray_say_how_to_get_it(tmp_path, capsys, monkeypatch):
    import retain.executors

    monkeypatch.setattr(retain.executors, "ray_available", lambda: False)
    out = tmp_path / "cmp"
    argv = ["compare", *FAST, "--methods", "finetune", "--out", str(out), "--workers", "2"]
    assert main(argv) == 2
    err = _error_line(capsys)
    assert "pip install 'retain-cl[sweep]'" in err and "--workers 1" in err
