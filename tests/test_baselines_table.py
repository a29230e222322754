"""benchmarks/baselines_table.py: which trials it asks compare for, and how it summarises them."""

import importlib.util
import json
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "baselines_table.py"
spec = importlib.util.spec_from_file_location("baselines_table", SCRIPT)
bt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bt)


def _sets(argv):
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def test_memory_and_method_settings_go_only_to_methods_that_take_them(monkeypatch):
    params = {"finetune": ["loss_heads"], "er": ["memory_size", "minibatch_size"]}
    monkeypatch.setattr(bt, "METHOD_SETTINGS", {"er": {"minibatch_size": 7, "lamb": 3}})
    argv = bt.compare_argv("permuted-fmnist", ["finetune", "er"], params, "3", Path("o"), 2)
    sets = _sets(argv)
    assert "er:method_args.memory_size=200" in sets
    assert "er:method_args.minibatch_size=7" in sets
    assert not any(s.startswith("finetune:") or "lamb" in s for s in sets)
    assert 'head="shared"' in sets and "benchmark_args.train_per_class=1000" in sets
    assert argv[argv.index("--protocol") + 1] == "seen"
    assert argv[argv.index("--workers") + 1] == "2"


def test_unregistered_methods_are_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bt, "registered_methods", lambda: {"finetune": ["loss_heads"]})
    monkeypatch.setattr(bt, "run_compare", lambda argv, dry: calls.append(argv) or 0)
    rc = bt.main(["--out", str(tmp_path), "--methods", "finetune,nosuch", "--benchmarks", "b"])
    assert rc == 0
    assert calls[0][calls[0].index("--methods") + 1] == "finetune"
    assert "nosuch: not registered" in capsys.readouterr().err
    assert json.loads((tmp_path / "baselines.json").read_text())["notes"] == [
        "nosuch: not registered in this checkout, skipped"
    ]


def _run(folder, method, seed, tag, seconds):
    d = folder / f"b-{method}-seed{seed}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        yaml.safe_dump({"method": method, "benchmark": "b", "seed": seed, "epochs": 1})
    )
    summary = {"acc": tag, "bwt": -0.5}
    (d / "metrics.json").write_text(
        json.dumps({"task_aware": {"summary": summary}, "task_agnostic": {"summary": summary}})
    )
    (d / "timings.json").write_text(json.dumps({"seconds_per_task": [seconds, seconds]}))


def test_rows_are_mean_std_over_seeds_with_time_over_finetune(tmp_path):
    _run(tmp_path, "finetune", 0, 0.2, 5.0)
    _run(tmp_path, "finetune", 1, 0.2, 5.0)
    _run(tmp_path, "er", 0, 0.6, 10.0)
    _run(tmp_path, "er", 1, 0.8, 20.0)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("method: er\n")
    rows = bt.summarize(bt.read_runs(tmp_path), ["finetune", "er"])
    assert [r["method"] for r in rows] == ["finetune", "er"]
    er = rows[1]
    assert er["seeds"] == [0, 1] and er["time_over_finetune"] == 3.0  # 30 s over 10 s (2 tasks)
    assert bt.mean_std(er["tag_acc"]) == "70.0 ± 14.1"
    assert "| er | seen | 70.0 ± 14.1 |" in bt.markdown(rows)


def test_trials_of_an_earlier_method_setting_are_left_out(monkeypatch, capsys):
    monkeypatch.setattr(bt, "METHOD_SETTINGS", {"gdumb": {"epochs": 64}})
    params = {"gdumb": ["memory_size", "epochs"], "finetune": ["loss_heads"]}
    runs = [
        {"method": "gdumb", "folder": "old", "method_args": {"memory_size": 200, "epochs": None}},
        {"method": "gdumb", "folder": "new", "method_args": {"memory_size": 200, "epochs": 64}},
        {"method": "finetune", "folder": "ft", "method_args": {"loss_heads": "seen"}},
    ]
    assert [r["folder"] for r in bt.current(runs, params)] == ["new", "ft"]
    assert "left out old (another setting)" in capsys.readouterr().err
