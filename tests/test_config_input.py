"""Reading configs: every number a person writes is a number on every path a config takes,
and bad input (a value of the wrong kind, a misspelt or misplaced key or name, a broken,
empty or missing config file, a run that names no method or benchmark, an --out that cannot
be written, more than one epoch of a stream) is one line on stderr, exit code 2, with nothing
created or changed."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import pytest
import yaml

from retain import config_yaml
from retain.cli import main
from retain.data import BENCHMARKS
from retain.engine import runio
from retain.experiment import FIELDS, RunConfig, load_yaml, resolve
from retain.methods import REGISTRY
from retain.models.registry import MODELS
from retain.sweep import expand, load_spec

FAST = ["--benchmark", "split-digits", "--set", "batch_size=32", "--quiet"]
RUN = ["run", "--method", "finetune", *FAST]
TINY = ["--set", "benchmark_args.n_tasks=2", "--set", "model_args.hidden=[8]"]
VALID_KEYS = ", ".join(sorted(FIELDS))
BASE_LAMB = ["--set", "method_args.base_args.lamb=abc"]
EWC_ARGS = "lamb, importance, importance_args, online, alpha, protect, loss_heads"


def _one_error(capsys) -> str:
    """The one line a refused command printed (``retain: error: ...``)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder), but the empty lock
    files ``retain run`` takes beside its --out (``.<name>.lock``) before checking it."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
        if not (p.name.startswith(".") and p.name.endswith(".lock") and p.stat().st_size == 0)
    }


def _refused(capsys, tmp_path: Path, argv: list[str]) -> str:
    """Run ``argv``; assert exit code 2, one line, and that nothing under ``tmp_path``
    changed; return the line without its ``retain: error: `` prefix."""
    before = _tree(tmp_path)
    assert main(argv) == 2
    line = _one_error(capsys)
    assert line.startswith("retain: error: "), line
    assert _tree(tmp_path) == before
    return line.removeprefix("retain: error: ")


# --------------------------------------------------------------- the YAML reader of configs
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-3", 0.001),
        ("1E9", 1e9),
        ("5e+3", 5000.0),
        (".5", 0.5),
        ("-.5", -0.5),
        ("-2.5e-4", -0.00025),
        ("+1e3", 1000.0),
        ("1e3", 1000.0),
        ("1.0e-05", 1e-05),  # YAML 1.1 floats read as before
        ("0.01", 0.01),
        ("1_000.5", 1000.5),
    ],
)
def test_every_written_float_is_a_float(text, value):
    got = config_yaml.load(text)
    assert type(got) is float and got == value
    assert config_yaml.load(f"[{text}, {{k: {text}}}]") == [value, {"k": value}]


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), ("-7", -7), ("+4", 4), ("0x1f", 31), ("1_000", 1000), ("0", 0)],
)
def test_integers_stay_integers(text, value):
    got = config_yaml.load(text)
    assert type(got) is int and got == value


@pytest.mark.parametrize("text", ["1e", "e3", "1.2.3", "1e3x", "abc", "'1e-3'", "v1e3"])
def test_what_is_not_a_number_stays_a_string(text):
    assert isinstance(config_yaml.load(text), str)


def test_infinities_and_nan_read_as_yaml_1_1_does():
    assert config_yaml.load(".inf") == math.inf and config_yaml.load("-.inf") == -math.inf
    assert math.isnan(config_yaml.load(".nan"))


def test_the_safe_loader_itself_is_unchanged():
    assert yaml.safe_load("1e-3") == "1e-3"  # PyYAML's own resolver: the subclass has its own


@pytest.mark.parametrize(
    "value",
    [1e-05, 0.01, 5000.0, 1e20, 1e-300, -2.5e-4, 1 / 3, 1e16, 2.0**70, 123.456, math.inf],
)
def test_config_yaml_dumped_by_earlier_runs_reads_the_same(value):
    dumped = yaml.safe_dump({"lr": value})
    assert config_yaml.load(dumped) == yaml.safe_load(dumped) == {"lr": value}


def test_a_whole_dumped_config_round_trips():
    config = RunConfig(
        method="ewc",
        benchmark="split-digits",
        lr=1e-05,
        weight_decay=5e-4,
        method_args={"lamb": 1e3, "alpha": 0.5},
        model_args={"hidden": [8, 8], "dropout": 0.25},
        benchmark_args={"n_tasks": 2},
    ).to_dict()
    dumped = yaml.safe_dump(config)
    assert config_yaml.load(dumped) == yaml.safe_load(dumped) == config


# ------------------------------------------------ 1e-3 arrives as a float on every path
def _captured_run(monkeypatch) -> list:
    """Make ``retain run`` record its resolved config instead of training."""
    seen: list = []
    monkeypatch.setattr("retain.cli._execute", lambda config, *a, **k: seen.append(config) or 0)
    return seen


def _captured_trials(monkeypatch) -> list:
    """Make compare and sweep record their trials instead of running them."""
    seen: list = []
    monkeypatch.setattr("retain.cli._run_trials", lambda trials, *a, **k: seen.extend(trials) or 0)
    return seen


def test_run_set_1e_3_is_a_float_in_the_written_config(tmp_path, capsys):
    out = tmp_path / "r"
    assert (
        main([*RUN, *TINY, "--set", "lr=1e-3", "--set", "weight_decay=5e-4", "--out", str(out)])
        == 0
    )
    written = config_yaml.load((out / runio.CONFIG).read_text())
    assert written["lr"] == 0.001 and type(written["lr"]) is float
    assert written["weight_decay"] == 0.0005


@pytest.mark.parametrize(
    ("pair", "key", "value"),
    [
        ("lr=1e-3", "lr", 0.001),
        ("lr=1E-2", "lr", 0.01),
        ("lr=.5", "lr", 0.5),
        ("weight_decay=5e-4", "weight_decay", 0.0005),
        ("momentum=+9e-1", "momentum", 0.9),
        ("method_args.lamb=1e3", "method_args", {"lamb": 1000.0}),
        ("method_args.lamb=5e+3", "method_args", {"lamb": 5000.0}),
        ("model_args.dropout=2.5e-1", "model_args", {"dropout": 0.25}),
    ],
)
def test_run_set_floats(tmp_path, monkeypatch, pair, key, value):
    seen = _captured_run(monkeypatch)
    argv = ["run", "--method", "ewc", *FAST, "--set", pair, "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    got = getattr(seen[0], key)
    assert got == value
    leaf = got["lamb" if "lamb" in pair else "dropout"] if isinstance(got, dict) else got
    assert type(leaf) is float


def test_yaml_config_floats(tmp_path, monkeypatch):
    seen = _captured_run(monkeypatch)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "method: ewc\nbenchmark: split-digits\nlr: 1e-3\nweight_decay: +1e-4\n"
        "method_args: {lamb: 1E4, alpha: .5}\nmodel_args: {dropout: 1e-1}\n"
    )
    assert main(["run", "--config", str(cfg), "--quiet", "--out", str(tmp_path / "r")]) == 0
    config = seen[0]
    assert type(config.lr) is float and config.lr == 0.001 and config.weight_decay == 1e-4
    assert config.method_args == {"lamb": 10000.0, "alpha": 0.5}
    assert type(config.method_args["lamb"]) is float
    assert config.model_args == {"dropout": 0.1}


def test_compare_set_floats_common_and_per_method(tmp_path, monkeypatch):
    trials = _captured_trials(monkeypatch)
    argv = ["compare", "--benchmark", "split-digits", "--methods", "finetune,ewc", "--seeds", "1"]
    argv += ["--set", "lr=1e-3", "--set", "ewc:method_args.lamb=1e3", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    by_method = {t.config.method: t.config for t in trials}
    assert by_method["finetune"].lr == by_method["ewc"].lr == 0.001
    assert type(by_method["ewc"].lr) is float
    lamb = by_method["ewc"].method_args["lamb"]
    assert lamb == 1000.0 and type(lamb) is float


def test_sweep_file_set_grid_and_method_floats(tmp_path, monkeypatch):
    trials = _captured_trials(monkeypatch)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "set: {weight_decay: 5e-4}\n"
        "grid: {lr: [1e-3, 1E-2]}\n"
        "benchmarks: [split-digits]\n"
        "methods:\n  ewc: {set: {method_args.lamb: 1e3}}\n"
    )
    argv = ["sweep", str(sweep), "--workers", "1", "--set", "momentum=9e-1"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    assert sorted(t.config.lr for t in trials) == [0.001, 0.01]
    for t in trials:
        assert type(t.config.lr) is float and t.config.weight_decay == 0.0005
        assert t.config.method_args == {"lamb": 1000.0} and t.config.momentum == 0.9


def test_sweep_search_space_bounds_are_floats(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "benchmarks: [split-digits]\nmethods: [ewc]\n"
        "search:\n  trials: 2\n  space:\n"
        "    lr: {low: 1e-4, high: 1e-1, log: true}\n"
        "    method_args.lamb: {choices: [1e2, 1e3]}\n"
    )
    space = load_spec(sweep).search.space
    assert (space["lr"].low, space["lr"].high) == (1e-4, 1e-1)
    assert space["method_args.lamb"].choices == (100.0, 1000.0)


def test_a_stored_config_yaml_with_1e_3_is_the_same_trial(tmp_path):
    """trials.py reads a trial folder's config.yaml with the same reader: a config written as
    `lr: 1e-3` by hand matches the trial that asks lr 0.001."""
    from retain.trials import START, Trial, trial_state

    config = resolve(None, {"method": "finetune", "benchmark": "split-digits", "lr": 0.001})
    trial = Trial.under(tmp_path, config)
    trial.run_dir.mkdir()
    text = yaml.safe_dump(config.to_dict()).replace("lr: 0.001", "lr: 1e-3")
    assert "lr: 1e-3" in text
    (trial.run_dir / runio.CONFIG).write_text(text)
    assert trial_state(trial) == START  # not "holds the config of another run"


def test_a_report_reads_a_config_yaml_with_1e_3(tmp_path, capsys):
    from retain.report.runs import _read_config

    run = tmp_path / "r"
    run.mkdir()
    (run / runio.CONFIG).write_text("method: ewc\nbenchmark: split-digits\nlr: 1e-3\n")
    assert _read_config(run)["lr"] == 0.001


def test_an_integer_key_given_a_float_is_refused_with_what_to_write(tmp_path, capsys):
    """The rule: an integer key takes an integer; 1e3 is the float 1000.0 and is refused."""
    line = _refused(capsys, tmp_path, [*RUN, "--set", "epochs=1e3", "--out", str(tmp_path / "r")])
    assert line == "epochs must be an integer, got 1000.0 (a float; write 1000 for an integer)"


# ------------------------------------------------------------- values of the wrong kind
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--method", "ewc", "--set", "method_args.lamb=abc"],
            "method_args.lamb must be a number, got 'abc'",
        ),
        (
            ["--method", "ewc", "--set", "method_args.online=maybe"],
            "method_args.online must be true or false, got 'maybe'",
        ),
        (
            ["--method", "er", "--set", "method_args.memory_size=1e3"],
            "method_args.memory_size must be an integer, got 1000.0 (a float; write 1000 for "
            "an integer)",
        ),
        (
            ["--method", "ewc", "--set", "method_args.alpha=x"],
            "method_args.alpha must be a number or null, got 'x'",
        ),
        (
            ["--set", "model_args.hidden=abc"],
            "model_args.hidden must be a list of integers, got 'abc'",
        ),
        (
            ["--set", "model_args.hidden=[8, x]"],
            "model_args.hidden must be a list of integers, got [8, 'x']",
        ),
        (["--set", "model_args.dropout=lots"], "model_args.dropout must be a number, got 'lots'"),
        (
            ["--set", "benchmark_args.n_tasks=abc"],
            "benchmark_args.n_tasks must be an integer, got 'abc'",
        ),
        (
            ["--set", "benchmark_args.shuffle_classes=3"],
            "benchmark_args.shuffle_classes must be true or false, got 3",
        ),
        (
            ["--set", "model_args.head_bias=maybe"],
            "model_args.head_bias must be true or false, got 'maybe'",
        ),
        (
            ["--method", "scrollnet", *("--set", "method_args.base=ewc"), *BASE_LAMB],
            "method_args.base_args.lamb must be a number, got 'abc'",
        ),
    ],
)
def test_an_argument_of_the_wrong_kind_names_the_key(tmp_path, capsys, argv, message):
    out = tmp_path / "r"
    assert _refused(capsys, tmp_path, [*RUN, *argv, "--out", str(out)]) == message


@pytest.mark.parametrize("smoke", [None, True])
def test_every_shipped_config_still_resolves(smoke):
    """The argument checks refuse none of configs/ (head_bias beside the backbone's options,
    EWC's importance_args for the estimator named 'spg', ScrollNet's base_args), with the
    smoke overlay's caps too."""
    configs = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
    assert len(configs) > 30
    for path in configs:
        assert resolve(path, {"smoke": smoke}).smoke is bool(smoke)


def test_nested_base_args_are_checked_only_against_a_method():
    """``importance: spg`` names an estimator, not the method spg: its importance_args are not
    taken for the method's arguments; ScrollNet's ``base: ewc`` is a method."""
    sets = ["method=ewc", "method_args.importance=spg", "method_args.importance_args.chi=true"]
    assert resolve(None, None, sets).method_args["importance_args"] == {"chi": True}
    sets = ["method=scrollnet", "method_args.base=ewc", "method_args.base_args.lamb=1e3"]
    assert resolve(None, None, sets).method_args["base_args"] == {"lamb": 1000.0}


# ------------------------------------------------------------- misplaced or misspelt keys
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--method", "ewc", "--set", "lamb=100"],
            "unknown key 'lamb'; did you mean method_args.lamb?",
        ),
        (["--set", "hidden=[8]"], "unknown key 'hidden'; did you mean model_args.hidden?"),
        (["--set", "n_tasks=2"], "unknown key 'n_tasks'; did you mean benchmark_args.n_tasks?"),
        (
            ["--set", "learning_rate=0.1"],
            f"unknown key 'learning_rate'; did you mean lr? valid keys: {VALID_KEYS}",
        ),
        (
            ["--set", "epoch=3"],
            f"unknown key 'epoch'; did you mean epochs? valid keys: {VALID_KEYS}",
        ),
        (["--set", "zzz=3"], f"unknown key 'zzz'; valid keys: {VALID_KEYS}"),
    ],
)
def test_an_unknown_top_level_key_says_what_was_meant(tmp_path, capsys, argv, message):
    out = tmp_path / "r"
    assert _refused(capsys, tmp_path, [*RUN, *argv, "--out", str(out)]) == f"--set: {message}"


def test_a_method_key_for_another_method_is_not_suggested(tmp_path, capsys):
    """finetune takes no lamb: the line does not send the user to method_args.lamb."""
    line = _refused(capsys, tmp_path, [*RUN, "--set", "lamb=1", "--out", str(tmp_path / "r")])
    assert line == f"--set: unknown key 'lamb'; valid keys: {VALID_KEYS}"


def test_a_misplaced_key_in_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: ewc\nbenchmark: split-digits\nlamb: 100\n")
    line = _refused(capsys, tmp_path, ["run", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert line == f"config {cfg}: unknown key 'lamb'; did you mean method_args.lamb?"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--method", "ewcc"],
            f"unknown method 'ewcc'; did you mean ewc? valid: {', '.join(sorted(REGISTRY))}",
        ),
        (
            ["--benchmark", "split-digitz"],
            "unknown benchmark 'split-digitz'; did you mean split-digits? valid names: "
            + ", ".join(BENCHMARKS),
        ),
        (
            ["--model", "mlpp"],
            f"unknown model 'mlpp'; did you mean mlp? choose one of {', '.join(MODELS)}",
        ),
        (
            ["--method", "ewc", "--set", "method_args.lam=1"],
            f"method 'ewc' has no argument 'lam'; did you mean lamb? accepted: {EWC_ARGS}",
        ),
        (
            ["--set", "benchmark_args.n_task=2"],
            "benchmark 'split-digits' does not accept n_task; did you mean n_tasks? accepted: "
            "n_tasks, seed, class_order, shuffle_classes, split_seed",
        ),
        (
            ["--set", "model_args.hiden=[8]"],
            "unknown option 'hiden' for model 'mlp'; did you mean hidden? accepted: hidden, "
            "dropout, bias, head_bias",
        ),
    ],
)
def test_a_misspelt_name_says_the_close_one(tmp_path, capsys, argv, message):
    assert _refused(capsys, tmp_path, [*RUN, *argv, "--out", str(tmp_path / "r")]) == message


# ------------------------------------------------------------------------ config files
@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "method: [ewc\nbenchmark: split-digits\n",
            "at line 2, column 10: expected ',' or ']', but got ':'",
        ),
        (
            "method: ewc\n  benchmark: x\n",
            "at line 2, column 12: mapping values are not allowed here",
        ),
        (
            "method: ewc\nlr: [1, 2\n",
            "at line 3, column 1: expected ',' or ']', but got '<stream end>'",
        ),
    ],
)
def test_malformed_yaml_says_the_line_and_column(tmp_path, capsys, text, where):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    line = _refused(capsys, tmp_path, ["run", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert line == f"config file {str(cfg)!r} is not valid YAML {where}"


def test_a_config_that_is_a_folder_says_so(tmp_path, capsys):
    folder = tmp_path / "configs"
    folder.mkdir()
    line = _refused(
        capsys, tmp_path, ["run", "--config", str(folder), "--out", str(tmp_path / "r")]
    )
    assert line == f"config file {str(folder)!r} is a folder, not a YAML file"


@pytest.mark.parametrize(
    ("text", "what"), [("", "is empty"), ("# only\n\n# comments\n", "is empty (only comments)")]
)
def test_an_empty_config_file_is_refused(tmp_path, capsys, text, what):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    argv = [
        "run",
        *FAST,
        "--method",
        "finetune",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "r"),
    ]
    assert _refused(capsys, tmp_path, argv) == f"config file {str(cfg)!r} {what}"
    with pytest.raises(ValueError, match="is empty"):
        load_yaml(cfg)


def test_an_empty_sweep_file_is_refused(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("# nothing yet\n")
    line = _refused(
        capsys, tmp_path, ["sweep", str(sweep), "--workers", "1", "--out", str(tmp_path / "o")]
    )
    assert line == f"config file {str(sweep)!r} is empty (only comments)"


# ------------------------------------------------------ a run names its method and benchmark
NEEDS_BOTH = (
    "a run needs a method and a benchmark: give --method and --benchmark (or name them in a "
    "--config file or with --set), e.g. retain run --method finetune --benchmark split-digits; "
    "--resume DIR continues a stopped run"
)


def test_run_with_no_arguments_trains_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _refused(capsys, tmp_path, ["run"]) == NEEDS_BOTH
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--benchmark", "split-digits"], "a run needs a method: give --method (or name it"),
        (["--method", "ewc"], "a run needs a benchmark: give --benchmark (or name it"),
        (["--set", "method=ewc"], "a run needs a benchmark: give --benchmark (or name it"),
    ],
)
def test_run_naming_only_one_of_them(tmp_path, capsys, argv, message):
    line = _refused(capsys, tmp_path, ["run", *argv, "--out", str(tmp_path / "r")])
    assert line.startswith(message) and line.endswith("--resume DIR continues a stopped run")


@pytest.mark.parametrize("where", ["flags", "set", "config"])
def test_method_and_benchmark_may_come_from_any_layer(tmp_path, monkeypatch, where):
    seen = _captured_run(monkeypatch)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: ewc\nbenchmark: split-digits\n")
    argv = {
        "flags": ["--method", "ewc", "--benchmark", "split-digits"],
        "set": ["--set", "method=ewc", "--set", "benchmark=split-digits"],
        "config": ["--config", str(cfg)],
    }[where]
    assert main(["run", *argv, "--quiet", "--out", str(tmp_path / "r")]) == 0
    assert (seen[0].method, seen[0].benchmark) == ("ewc", "split-digits")


def test_the_api_resolve_still_has_defaults():
    assert (resolve().method, resolve().benchmark) == ("finetune", "split-mnist5k")


# ------------------------------------------------------------------ an --out not writable
def _read_only_folder(tmp_path: Path, monkeypatch) -> Path:
    """An empty folder files cannot be created in: mode 0o555, and where the tests run as
    root (whom modes do not stop) the kernel's EACCES for any file made in it."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        real = runio._temp_beside

        def refuse(path):
            if Path(path).parent.resolve() == ro.resolve():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real(path)

        monkeypatch.setattr(runio, "_temp_beside", refuse)
    return ro


def _argv(command: str, out: Path, tmp_path: Path, capsys) -> list[str]:
    if command == "run":
        return [*RUN, "--out", str(out)]
    if command == "compare":
        return [
            "compare",
            "--benchmark",
            "split-digits",
            "--methods",
            "finetune",
            "--seeds",
            "1",
            "--out",
            str(out),
        ]
    finished = tmp_path / "finished"
    assert main([*RUN, *TINY, "--out", str(finished)]) == 0
    capsys.readouterr()
    return ["report", str(finished), "--out", str(out)]


@pytest.mark.parametrize("command", ["run", "compare", "report"])
def test_a_read_only_out_is_one_line_and_nothing_is_written(tmp_path, capsys, monkeypatch, command):
    ro = _read_only_folder(tmp_path, monkeypatch)
    argv = _argv(command, ro, tmp_path, capsys)
    try:
        line = _refused(capsys, tmp_path, argv)
        assert line == f"--out: cannot write in {ro}: Permission denied"
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("command", ["run", "compare", "report"])
def test_an_out_below_a_file_is_one_line(tmp_path, capsys, command):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    out = notes / "run"
    argv = _argv(command, out, tmp_path, capsys)
    line = _refused(capsys, tmp_path, argv)
    assert line == f"--out {str(out)!r} cannot be made: {str(notes)!r} is a file, not a folder"
    assert notes.read_text() == "keep me\n"


# ----------------------------------------------------------- a single-pass stream, epochs 3
STREAM = "benchmark 'mnist360-5k' is a single-pass stream: epochs must be 1, got 3"


def test_compare_of_a_stream_with_3_epochs_is_a_config_error(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["compare", "--benchmark", "mnist360-5k", "--methods", "finetune,er", "--seeds", "1"]
    assert _refused(capsys, tmp_path, [*argv, "--epochs", "3", "--out", str(out)]) == STREAM
    assert not out.exists()


def test_run_and_sweep_of_a_stream_with_3_epochs_are_config_errors(tmp_path, capsys):
    argv = ["run", "--method", "finetune", "--benchmark", "mnist360-5k", "--epochs", "3"]
    assert _refused(capsys, tmp_path, [*argv, "--out", str(tmp_path / "r")]) == STREAM
    sweep = tmp_path / "s.yaml"
    sweep.write_text("set: {epochs: 3}\nbenchmarks: [mnist360-5k]\nmethods: [finetune]\n")
    argv = ["sweep", str(sweep), "--workers", "1", "--out", str(tmp_path / "o")]
    assert _refused(capsys, tmp_path, argv) == STREAM


def test_single_pass_entries_are_the_streams():
    """The flag checked with the config agrees with what the benchmark builds (offline ones)."""
    from retain.data import get_benchmark
    from retain.data.benchmarks import is_single_pass

    assert [n for n in BENCHMARKS if is_single_pass(n)] == ["mnist360-5k", "mnist360"]
    for name in ("mnist360-5k", "split-digits"):
        bench = get_benchmark(name)
        assert any(t.ordered for t in bench) == is_single_pass(name)


def test_expand_refuses_a_stream_with_epochs_before_any_trial(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("set: {epochs: 2}\nbenchmarks: [mnist360-5k]\nmethods: [finetune]\n")
    with pytest.raises(ValueError, match="single-pass stream: epochs must be 1, got 2"):
        expand(load_spec(sweep))


def test_resuming_a_folder_whose_config_yaml_was_emptied_trains_no_defaults(tmp_path, capsys):
    """A folder stopped before its first checkpoint restarts from its config.yaml; emptied, it
    is refused (it used to train finetune on split-mnist5k)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / runio.CONFIG).write_text("# emptied\n")
    line = _refused(capsys, tmp_path, ["run", "--resume", str(run)])
    cfg = run / runio.CONFIG
    assert line == f"cannot resume: {cfg}: config file {str(cfg)!r} is empty (only comments)"


def test_python_callers_may_pass_numpy_numbers():
    import numpy as np

    from retain.methods import make_method

    assert make_method("er", memory_size=np.int64(20)).buffer.size == 20
    with pytest.raises(ValueError, match=r"^method_args.memory_size must be an integer, got 2.5$"):
        make_method("er", memory_size=2.5)
