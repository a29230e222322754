"""Run folders written by ``retain.fit(..., run_dir=D)`` are the command line's: refused when
they hold a run, locked while written, with the ``config.yaml`` and ``environment.json`` of
``retain run``; ``retain report`` reads them, ``retain run --resume`` continues them (or, for
objects of one's own, says to resume from Python)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import retain
from retain.cli import main
from retain.data import get_benchmark
from retain.engine import runio, trainer
from retain.experiment import RunConfig
from retain.methods import make_method
from retain.methods.ewc import EWC
from retain.models import ContinualModel, build_model
from tests.synthetic import blobs
from tests.test_cli import _error_line

#: the API run and the `retain run` below train the same settings
CLI_ARGS = [
    "--benchmark",
    "split-digits",
    "--method",
    "ewc",
    "--set",
    "method_args.lamb=5",
    "--set",
    "benchmark_args.n_tasks=2",
    "--set",
    "model_args.hidden=[32]",
    "--set",
    "batch_size=32",
    "--quiet",
]


def _bench():
    return get_benchmark("split-digits", n_tasks=2)


def _model(bench, seed: int = 0) -> nn.Module:
    retain.seed_everything(seed)  # as `retain run` builds it
    return build_model("mlp", tuple(bench.input_shape), bench.classes_per_task, hidden=[32])


def _fit(run_dir: Path, seed: int = 0, method=None, **kw):
    bench = _bench()
    method = EWC(lamb=5) if method is None else method
    return retain.fit(
        _model(bench, seed), bench, method, run_dir=run_dir, batch_size=32, seed=seed, **kw
    )


class Features(nn.Module):
    """A feature extractor of one's own (not from the model registry)."""

    out_features = 16

    def __init__(self, n_in: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x.flatten(1)))


def _own_model(bench) -> ContinualModel:
    retain.seed_everything(0)
    n_in = int(torch.tensor(bench.input_shape).prod())
    return ContinualModel(Features(n_in), bench.classes_per_task)


def _stop_after_task_0(task: int, result) -> None:
    if task == 0:
        raise KeyboardInterrupt  # as Ctrl-C after the first task's checkpoint


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------ 1. refusal and lock
def test_fit_refuses_a_folder_that_holds_a_run_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    _fit(run)
    before = _files(run)
    assert {"config.yaml", "metrics.json", "checkpoint.pt"} <= set(before)
    with pytest.raises(runio.RunFolderError) as info:
        _fit(run, seed=1)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == (
        f"{str(run)!r} already holds a run; use resume=True to continue it or another run_dir"
    )
    assert _files(run) == before  # byte for byte, and no file added
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]


@pytest.mark.parametrize("name", ["config.yaml", "metrics.json", "checkpoint.pt"])
def test_any_file_of_a_run_makes_fit_refuse_as_retain_run_does(tmp_path, capsys, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text("kept\n")
    with pytest.raises(runio.RunFolderError, match="already holds a run; use resume=True"):
        _fit(run)
    assert _files(run) == {name: b"kept\n"}
    assert main(["run", *CLI_ARGS, "--out", str(run)]) == 2
    assert _error_line(capsys) == (
        f"retain: error: {str(run)!r} already holds a run; use --resume {run} or another --out"
    )
    assert _files(run) == {name: b"kept\n"}


def test_fit_into_a_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(runio.RunFolderError) as info:
        _fit(path)
    assert str(info.value) == f"run_dir {str(path)!r} exists and is not a folder"
    assert path.read_text() == "x"


def test_fit_takes_the_folders_lock_that_retain_run_takes(tmp_path, capsys):
    run = tmp_path / "run"
    lock = runio.lock_path(run)
    with runio.folder_lock(lock), pytest.raises(runio.RunFolderError) as info:
        _fit(run)
    assert str(info.value) == (
        f"{str(run)!r} is in use by another retain process (its lock .run.lock is held); "
        "wait for it to end or use another run_dir"
    )
    assert not run.exists()
    seen = []

    def while_training(task: int, result) -> None:
        if task == 0:  # fit holds the lock: `retain run` on the folder is refused
            seen.append(main(["run", *CLI_ARGS, "--out", str(run)]))
            seen.append(_error_line(capsys))

    _fit(run, on_task_end=while_training)
    assert seen[0] == 2
    assert "is in use by another retain process (its lock .run.lock is held)" in seen[1]
    with runio.folder_lock(lock, blocking=False):  # released when fit returned
        pass


def test_resume_true_restarts_a_folder_stopped_before_its_first_checkpoint(tmp_path, capsys):
    full, run = tmp_path / "full", tmp_path / "run"
    _fit(full)
    _fit(run)
    (run / "checkpoint.pt").unlink()
    (run / "metrics.json").unlink()
    _fit(run, resume=True)
    assert "was stopped before its first checkpoint; starting it again" in capsys.readouterr().err
    assert (run / "metrics.json").read_bytes() == (full / "metrics.json").read_bytes()
    (run / "checkpoint.pt").unlink()
    (run / "metrics.json").unlink()
    before = _files(run)
    with pytest.raises(runio.RunFolderError) as info:
        _fit(run, resume=True, lr=0.5)
    assert str(info.value) == (
        f"cannot resume: {run / 'config.yaml'} holds the config of another run (lr: 0.01 "
        "there, 0.5 asked); use another run_dir"
    )
    assert _files(run) == before


# ------------------------------------------------------------------ 2. config.yaml
def test_config_yaml_is_what_retain_run_writes_for_the_same_settings(tmp_path):
    api, cli = tmp_path / "api", tmp_path / "cli"
    _fit(api)
    assert main(["run", *CLI_ARGS, "--out", str(cli)]) == 0
    assert (api / "config.yaml").read_bytes() == (cli / "config.yaml").read_bytes()
    api_env = json.loads((api / "environment.json").read_text())
    cli_env = json.loads((cli / "environment.json").read_text())
    assert api_env == cli_env
    # the same run, so the same numbers (and the checkpoint's config is config.yaml's)
    assert (api / "metrics.json").read_bytes() == (cli / "metrics.json").read_bytes()
    stored = runio.load_torch(api / "checkpoint.pt")["config"]
    assert stored == yaml.safe_load((api / "config.yaml").read_text())


@pytest.mark.parametrize(
    "method",
    [lambda: EWC(lamb=5), lambda: EWC(5), lambda: make_method("ewc", lamb=5)],
    ids=["class-keyword", "class-positional", "make_method"],
)
def test_method_arguments_are_recorded_however_it_was_made(method):
    assert method().hyperparameters() == {"lamb": 5}
    bench = _bench()
    described = trainer.describe_run(_model(bench), bench, method(), retain.TrainConfig(), 3)
    assert described["method"] == "ewc" and described["method_args"] == {"lamb": 5}
    assert described["model_args"] == {"hidden": [32]}
    assert described["benchmark_args"] == {"n_tasks": 2}
    assert described["seed"] == 3 and runio.OWN_OBJECTS not in described


@pytest.mark.parametrize(
    "settings", [{}, {"augment": {"flip": True}, "amp": "bf16", "lr_milestones": [2]}]
)
def test_the_description_has_run_configs_keys_in_its_order(settings):
    """describe_run builds RunConfig.to_dict()'s dict itself (the engine does not import the
    experiment layer): the same keys, order and values, later fields left out at defaults."""
    bench = _bench()
    train = retain.TrainConfig(**settings)
    described = trainer.describe_run(_model(bench), bench, EWC(lamb=5), train, 7)
    expected = RunConfig(
        **{f: getattr(train, f) for f in retain.TrainConfig.__dataclass_fields__},
        method="ewc",
        method_args={"lamb": 5},
        benchmark="split-digits",
        benchmark_args={"n_tasks": 2},
        model_args={"hidden": [32]},
        seed=7,
        threads=torch.get_num_threads(),
    ).to_dict()
    assert list(described.items()) == list(expected.items())


def test_objects_of_ones_own_are_marked_and_the_rest_is_a_valid_run_config(tmp_path):
    bench = blobs(n_tasks=2)  # built by hand, not by get_benchmark
    run = tmp_path / "run"
    retain.fit(_own_model(bench), bench, make_method("finetune"), run_dir=run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config[runio.OWN_OBJECTS] == {
        "benchmark": bench.name,
        "model": "tests.test_api_run_folders.Features",
    }
    assert (config["model"], config["model_args"]) == ("Features", {})
    assert (config["benchmark"], config["benchmark_args"]) == (bench.name, {})
    known = {k: v for k, v in config.items() if k != runio.OWN_OBJECTS}
    rc = RunConfig(**known)
    rc.validate()
    assert rc.to_dict() == known
    assert (run / "environment.json").is_file()


def test_a_method_of_ones_own_or_with_objects_as_arguments_is_marked():
    class Mine(retain.methods.Method):
        name = "mine"

    bench = _bench()
    for method, path in (
        (Mine(), f"{Mine.__module__}.{Mine.__qualname__}"),
        (make_method("scrollnet", base=EWC()), "retain.methods.scrollnet.ScrollNet"),
    ):
        described = trainer.describe_run(_model(bench), bench, method, retain.TrainConfig(), 0)
        assert described[runio.OWN_OBJECTS] == {"method": path}
        assert described["method_args"] == {}


# ------------------------------------------------------------------ 3. report and --resume
def test_report_lists_api_run_folders_as_one_group_of_two_seeds(tmp_path, capsys):
    for seed in (0, 1):
        _fit(tmp_path / "runs" / f"seed{seed}", seed=seed)
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    out, err = capsys.readouterr()
    assert "skipping" not in err
    rows = [line for line in out.splitlines() if line.startswith("| ewc ")]
    assert len(rows) == 1 and rows[0].split("|")[2].strip() == "2", out


def test_retain_run_resume_continues_an_api_run_byte_identically(tmp_path, capsys):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _fit(full)
    with pytest.raises(KeyboardInterrupt):
        _fit(killed, on_task_end=_stop_after_task_0)
    rows = json.loads((killed / "metrics.json").read_text())["task_aware"]["rows"]
    assert len(rows) == 1  # killed after task 0 of 2
    assert main(["run", "--resume", str(killed), "--quiet"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (full / "metrics.json").read_bytes() == (killed / "metrics.json").read_bytes()
    assert (full / "config.yaml").read_bytes() == (killed / "config.yaml").read_bytes()


def test_retain_run_resume_refuses_an_api_run_of_ones_own_model(tmp_path, capsys):
    bench = _bench()
    full, killed = tmp_path / "full", tmp_path / "killed"
    retain.fit(_own_model(bench), bench, EWC(lamb=5), run_dir=full)
    with pytest.raises(KeyboardInterrupt):
        retain.fit(
            _own_model(bench), bench, EWC(lamb=5), run_dir=killed, on_task_end=_stop_after_task_0
        )
    before = _files(killed)
    assert main(["run", "--resume", str(killed), "--quiet"]) == 2
    assert _error_line(capsys) == (
        f"retain: error: cannot resume: {str(killed)!r} was written by retain.fit with Python "
        "objects of its own (model tests.test_api_run_folders.Features) that retain run "
        f"cannot build; resume it from Python with retain.fit(..., run_dir={str(killed)!r}, "
        "resume=True)"
    )
    assert _files(killed) == before
    # what the message says works, and continues the run exactly
    retain.fit(_own_model(bench), bench, EWC(lamb=5), run_dir=killed, resume=True)
    assert (full / "metrics.json").read_bytes() == (killed / "metrics.json").read_bytes()


def test_report_tells_how_to_continue_an_unfinished_run_of_ones_own_model(tmp_path):
    from retain.report import collect

    bench = _bench()
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        retain.fit(
            _own_model(bench), bench, EWC(lamb=5), run_dir=run, on_task_end=_stop_after_task_0
        )
    (skipped,) = collect([run]).skipped
    assert skipped.reason == (
        f"unfinished: 1 of 2 tasks done (continue it with retain.fit(..., run_dir={str(run)!r}, "
        "resume=True))"
    )


def test_a_checkpoint_of_an_earlier_fit_still_resumes(tmp_path, monkeypatch):
    """Before config.yaml, fit stored a shorter config in its checkpoints."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    _fit(full)
    with monkeypatch.context() as m:
        m.setattr(
            trainer,
            "describe_run",
            lambda model, bench, method, config, seed: trainer._fit_config(
                config, seed, method, bench
            ),
        )
        with pytest.raises(KeyboardInterrupt):
            _fit(killed, on_task_end=_stop_after_task_0)
    (killed / "config.yaml").unlink()  # an earlier fit wrote none
    _fit(killed, resume=True)
    assert (full / "metrics.json").read_bytes() == (killed / "metrics.json").read_bytes()
    assert (full / "config.yaml").read_bytes() == (killed / "config.yaml").read_bytes()


def test_resume_from_python_compares_the_recorded_arguments_not_the_threads(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _fit(run, on_task_end=_stop_after_task_0)
    with pytest.raises(runio.CheckpointError) as info:
        _fit(run, resume=True, method=EWC(lamb=6))
    assert "(method_args: {'lamb': 5} in the checkpoint, {'lamb': 6} given)" in str(info.value)
    torch.set_num_threads(2)  # how it runs, not what it computes: the run goes on
    _fit(run, resume=True)
    assert len(json.loads((run / "metrics.json").read_text())["task_aware"]["rows"]) == 2
