"""Random/TPE search in sweeps (Optuna): points x seeds as trial folders, scored by the mean
metric over seeds, resumable after an interruption, bad search sections refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

import retain.engine
from retain.cli import main
from retain.search import score
from retain.trials import TrialResult

SPEC = {
    "seeds": 2,
    "set": {"batch_size": 32},
    "benchmarks": ["split-digits"],
    "methods": ["finetune"],
    "search": {
        "sampler": "random",
        "trials": 3,
        "seed": 1,
        "metric": "task_aware.acc",
        "space": {"lr": {"low": 0.01, "high": 0.3, "log": True}},
    },
}


def _write(tmp_path: Path, data: dict) -> Path:
    spec = tmp_path / "search.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec


def _trials(out: Path) -> dict[str, dict]:
    return {
        p.name: yaml.safe_load((p / "config.yaml").read_text())
        for p in sorted(out.iterdir())
        if p.name.startswith("split-digits-")
    }


def _study(out: Path):

    from retain.search import SearchSpec, open_study

    return open_study(
        out / "search" / "split-digits-finetune.log", "split-digits-finetune", SearchSpec()
    )


def test_score_is_the_mean_over_seeds_and_none_when_undefined():
    def result(acc, status="ok"):
        metrics = {"task_aware": {"summary": {"acc": acc}}}
        return TrialResult("t", "d", "start", status, metrics=metrics)

    assert score([result(0.5), result(0.7)], "task_aware.acc") == pytest.approx(0.6)
    assert score([result(0.5), result(0.7, "failed")], "task_aware.acc") is None
    assert score([result(0.5), result(math.nan)], "task_aware.acc") is None
    assert score([result(0.5)], "task_agnostic.acc") is None


def test_search_runs_points_x_seeds_and_a_rerun_adds_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    spec = _write(tmp_path, SPEC)
    assert main(["sweep", str(spec), "--workers", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    trials = _trials(out)
    lrs = sorted({c["lr"] for c in trials.values()})
    assert len(trials) == 6 and len(lrs) == 3  # 3 points x 2 seeds
    assert all(0.01 <= lr <= 0.3 for lr in lrs)
    assert "best task_aware.acc" in captured.out and "3 points done, 0 failed" in captured.out
    study = _study(out)
    best = max(t.value for t in study.trials)
    by_lr = {}
    for name, cfg in trials.items():
        m = json.loads((out / name / "metrics.json").read_text())
        by_lr.setdefault(cfg["lr"], []).append(m["task_aware"]["summary"]["acc"])
    assert best == pytest.approx(max(sum(v) / len(v) for v in by_lr.values()))

    assert main(["sweep", str(spec), "--workers", "1", "--out", str(out)]) == 0
    assert "3 points done" in capsys.readouterr().out
    assert _trials(out) == trials
    history = json.loads((out / "trials.json").read_text())["trials"]
    assert all([e["action"] for e in h] == ["start"] for h in history.values())


def test_an_interrupted_search_resumes_its_running_point(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    spec = _write(tmp_path, SPEC)
    real_fit = retain.engine.fit
    calls = []

    def interrupted_fit(*args, **kwargs):
        calls.append(1)

        def stop(task_index, result):
            if len(calls) == 3 and task_index == 1:  # point #1, first seed, after 2 tasks
                raise KeyboardInterrupt

        return real_fit(*args, **kwargs, on_task_end=stop)

    monkeypatch.setattr(retain.engine, "fit", interrupted_fit)
    assert main(["sweep", str(spec), "--workers", "1", "--out", str(out)]) == 130
    monkeypatch.undo()
    running = [t for t in _study(out).trials if t.state.name == "RUNNING"]
    assert [t.number for t in running] == [1]
    lr = running[0].params["lr"]

    assert main(["sweep", str(spec), "--workers", "1", "--out", str(out)]) == 0
    study = _study(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.trials[1].params["lr"] == lr  # the same values, not a new point
    history = json.loads((out / "trials.json").read_text())["trials"]
    resumed = [n for n, h in history.items() if h[-1]["action"] == "resume"]
    assert len(resumed) == 1 and _trials(out)[resumed[0]]["lr"] == lr
    assert len(_trials(out)) == 6


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"grid": {"lr": [0.1, 0.2]}, "search": SPEC["search"]}, "either a grid or a search"),
        ({"search": {"metric": "acc"}}, "search.metric must be"),
        ({"search": {"sampler": "grid", "space": {"lr": {"low": 0.1, "high": 1}}}}, "sampler"),
        ({"search": {"space": {"lr": {"low": 1, "high": 0.1}}}}, "low must be below high"),
        ({"search": {"space": {"lr": {"low": 0, "high": 1, "log": True}}}}, "low > 0"),
        ({"search": {"space": {"lrr": {"low": 0.1, "high": 1}}}}, "unknown key 'lrr'"),
        ({"search": {"trials": 3}}, "no space to search"),
        ({"methods": {"finetune": {"space": {"lr": {"low": 0.1, "high": 1}}}}}, "needs a `search`"),
    ],
)
def test_bad_search_sections_are_one_line_and_exit_2(tmp_path, capsys, change, expected):
    data = {**{k: v for k, v in SPEC.items() if k != "search"}, **change}
    out = tmp_path / "out"
    assert main(["sweep", str(_write(tmp_path, data)), "--workers", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0 and expected in err, err
    assert not out.exists()


def test_without_optuna_a_search_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna" or name.startswith("optuna."):
            raise ImportError("no optuna")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    spec = _write(tmp_path, SPEC)
    assert main(["sweep", str(spec), "--workers", "1", "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'retain-cl[sweep]'" in capsys.readouterr().err
