"""One config path (:func:`retain.experiment.resolve`) for run, resume, compare and sweep: the
same inputs give the same config, ``--smoke`` is applied last everywhere, ``--lr`` is a flag
beside ``--epochs``, and a method writes its own files through ``write_artifacts``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from retain.cli import main
from retain.experiment import ConfigError, resolve

FAST = ["--benchmark", "split-digits", "--set", "batch_size=32"]
RUN = ["run", "--method", "finetune"]  # a run names its method and benchmark


def _configs(out: Path) -> list[dict]:
    """The ``config.yaml`` of every run folder under ``out`` (or of ``out`` itself)."""
    files = [out / "config.yaml"] if (out / "config.yaml").is_file() else out.glob("*/config.yaml")
    return [yaml.safe_load(f.read_text()) for f in sorted(files)]


def _epochs_trained(run_dir: Path) -> set[int]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return {e["epoch"] for e in events if "epoch" in e}


def test_compare_and_sweep_with_smoke_and_epochs_5_train_1_epoch_as_run_does(tmp_path):
    """The named fix: compare and sweep used to skip the smoke overlay (5 epochs, full model)."""
    run, cmp, swp = tmp_path / "run", tmp_path / "cmp", tmp_path / "swp"
    smoke5 = ["--set", "epochs=5", "--set", "smoke=true"]
    assert main([*RUN, *FAST, "--method", "finetune", *smoke5, "--quiet", "--out", str(run)]) == 0
    # --protocol own: finetune's own loss_heads, as `retain run` (compare's default sets seen)
    argv = ["compare", *FAST, "--methods", "finetune", "--seeds", "1", "--protocol", "own", *smoke5]
    assert main([*argv, "--workers", "1", "--out", str(cmp)]) == 0
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(
        "set: {epochs: 5, smoke: true, batch_size: 32}\n"
        "benchmarks: [split-digits]\nmethods: [finetune]\n"
    )
    assert main(["sweep", str(sweep_file), "--workers", "1", "--out", str(swp)]) == 0
    configs = [*_configs(run), *_configs(cmp), *_configs(swp)]
    assert len(configs) == 3
    assert all(c["epochs"] == 1 and c["smoke"] is True for c in configs)
    assert configs[0] == configs[1] == configs[2]  # one path: the same config everywhere
    trained = [run, *cmp.glob("split-digits-*"), *swp.glob("split-digits-*")]
    assert [_epochs_trained(d) for d in trained if d.is_dir()] == [{0}] * 3


def test_smoke_is_applied_after_every_layer():
    axes = [("grid", {"epochs": 7, "lr_milestones": [2]})]
    config = resolve(None, {"epochs": 3}, ["checkpoint_every=2"], axes=axes, overrides=[])
    assert (config.epochs, config.lr_milestones, config.checkpoint_every) == (7, [2], 2)
    smoke = resolve(
        None, {"epochs": 3}, ["checkpoint_every=2"], axes=[*axes, ("sweep set", {"smoke": True})]
    )
    assert (smoke.epochs, smoke.lr_milestones, smoke.checkpoint_every) == (1, [], 0)


def test_layers_apply_in_order_file_flags_axes_sets_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.1\nepochs: 2\nseed: 4\nbatch_size: 16\nthreads: 2\n")
    config = resolve(
        cfg,
        {"epochs": 3, "seed": None},
        ["batch_size=8"],
        axes=[("option", {"seed": 5, "batch_size": 4})],
        overrides=[("--set ewc:", {"threads": 3})],
    )
    assert (config.lr, config.epochs, config.seed, config.batch_size, config.threads) == (
        0.1,
        3,
        5,
        8,
        3,
    )
    parsed = resolve(sets={"lr": 0.5})
    assert parsed.lr == 0.5 == resolve(sets=["lr=0.5"]).lr


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"flags": {"method": "nope"}}, "unknown method 'nope'"),
        ({"flags": {"benchmark": "nope"}}, "unknown benchmark 'nope'"),
        ({"sets": ["benchmark_args.zz=1"]}, "does not accept zz"),
        ({"axes": [("grid", {"lrr": 1})]}, "grid: unknown key 'lrr'"),
        ({"overrides": [("--set ewc:", {"epochs": 0})]}, "epochs must be at least 1"),
        ({"sets": ["threads=0"]}, "threads must be at least 1"),
    ],
)
def test_bad_input_is_a_config_error_naming_its_source(kwargs, expected):
    with pytest.raises(ConfigError, match=expected):
        resolve(**kwargs)


def test_lr_flag_beside_epochs_in_run_and_compare(tmp_path, capsys):
    run, cmp = tmp_path / "run", tmp_path / "cmp"
    assert main([*RUN, *FAST, "--lr", "0.2", "--epochs", "2", "--quiet", "--out", str(run)]) == 0
    assert (_configs(run)[0]["lr"], _configs(run)[0]["epochs"]) == (0.2, 2)
    argv = ["compare", *FAST, "--methods", "finetune,ewc", "--seeds", "1", "--lr", "0.3"]
    assert main([*argv, "--workers", "1", "--out", str(cmp)]) == 0
    assert [c["lr"] for c in _configs(cmp)] == [0.3, 0.3]
    # --set is over the flags, as for --epochs
    assert resolve(None, {"lr": 0.2}, ["lr=0.4"]).lr == 0.4
    capsys.readouterr()
    assert main([*RUN, *FAST, "--lr", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "lr must be positive" in capsys.readouterr().err


def test_resume_with_a_different_lr_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*RUN, *FAST, "--lr", "0.2", "--quiet", "--out", str(run)]) == 0
    assert main(["run", "--resume", str(run), "--lr", "0.2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "--lr", "0.3"]) == 2
    assert "lr: 0.2 there, 0.3 asked" in capsys.readouterr().err


def test_execute_calls_the_methods_write_artifacts_once_the_run_is_done(tmp_path, monkeypatch):
    from retain.methods.finetune import Finetune
    from retain.trials import execute

    calls = []

    def record(self, run_dir: Path) -> None:
        rows = json.loads((run_dir / "metrics.json").read_text())["task_aware"]["rows"]
        calls.append((type(self).__name__, run_dir, len(rows)))

    monkeypatch.setattr(Finetune, "write_artifacts", record)
    config = resolve(flags={"benchmark": "split-digits", "method": "finetune"})
    execute(config, tmp_path / "r", resume=False)
    assert calls == [("Finetune", tmp_path / "r", 5)]


def test_dynamos_writes_its_analysis_through_the_hook(tmp_path):
    from retain.methods import make_method
    from retain.report.dynamos_analysis import NPZ

    method = make_method("dynamos")
    method.write_artifacts(tmp_path)  # no metrics.json: nothing
    assert list(tmp_path.iterdir()) == []
    firing = {"firing_rate_by_task": {"0": [0.5, 1.0], "1": [0.0, 0.25]}, "n_filters": [2]}
    (tmp_path / "metrics.json").write_text(json.dumps({"method": firing}))
    method.write_artifacts(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["metrics.json", NPZ, "firing_by_task.png"]
    )
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "metrics.json").write_text(json.dumps({"task_aware": {}}))
    make_method("finetune").write_artifacts(tmp_path / "none")
    make_method("dynamos").write_artifacts(tmp_path / "none")
    assert [p.name for p in (tmp_path / "none").iterdir()] == ["metrics.json"]
