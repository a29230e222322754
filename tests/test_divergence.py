"""Divergence (issue 18, item 6): a non-finite loss or non-finite weights stop the run with one
line naming the task, epoch and step, exit code 3 and a folder marked ``diverged.json``, which
compare and report show as diverged and never rank; non-finite config values and user data
are refused up front."""

from __future__ import annotations

import json
import math

import pytest
import torch

from retain.cli import EXIT_DIVERGED, main
from retain.data import DataError
from retain.data.custom import benchmark_from_datasets, benchmark_from_tensors
from retain.engine import DIVERGED, Diverged, fit
from retain.methods import make_method
from retain.methods.finetune import Finetune
from retain.models import ContinualModel
from retain.report import collect, make_report, markdown_table
from tests.synthetic import TinyBackbone, blobs

FAST = ["--benchmark", "split-digits", "--set", "batch_size=32", "--quiet"]
RUN = ["run", "--method", "finetune"]  # a run names its method and benchmark


def _model(bench, seed=0):
    torch.manual_seed(seed)
    return ContinualModel(TinyBackbone(), bench.classes_per_task)


class NanAt(Finetune):
    """Fine-tuning whose loss is NaN at one (task, epoch, step); ``weights``: instead, the
    step poisons a weight after the optimiser step (the loss stays finite that epoch)."""

    name = "nan-at"

    def __init__(self, task: int, epoch: int, step: int, weights: bool = False) -> None:
        super().__init__()
        self.at, self.weights, self.epoch = (task, epoch, step), weights, -1

    def before_epoch(self, task, epoch):
        self.epoch = epoch

    def _here(self, batch) -> bool:
        return (batch.task, self.epoch, batch.index) == self.at

    def loss(self, batch, task):
        loss = super().loss(batch, task)
        return loss * math.nan if self._here(batch) and not self.weights else loss

    def after_step(self, batch, task):
        if self._here(batch) and self.weights:
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = math.inf


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


# ---------------------------------------------------------------------- the engine
def test_nan_loss_at_a_known_step_stops_the_run_and_marks_the_folder(tmp_path):
    bench = blobs(n_tasks=3, per_class=32)  # 64 training samples a task: 8 batches of 8
    with pytest.raises(Diverged) as info:
        fit(_model(bench), bench, NanAt(1, 1, 5), epochs=3, batch_size=8, run_dir=tmp_path)
    e = info.value
    assert (e.task, e.epoch, e.step, e.what) == (1, 1, 5, "loss")
    assert "task 1, epoch 1, step 5" in str(e) and "\n" not in str(e)
    assert json.loads((tmp_path / DIVERGED).read_text())["step"] == 5
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # task 0's row stays valid
    assert len(metrics["task_aware"]["rows"]) == 1
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(ev["task"], ev["epoch"]) for ev in events] == [(0, 0), (0, 1), (0, 2), (1, 0)]


def test_non_finite_weights_after_an_epoch_stop_the_run(tmp_path):
    bench = blobs(n_tasks=2, per_class=32)
    with pytest.raises(Diverged) as info:  # poisoned in the last step: every loss was finite
        fit(_model(bench), bench, NanAt(0, 0, 7, weights=True), epochs=2, batch_size=8)
    assert (info.value.task, info.value.epoch, info.value.step) == (0, 0, 7)
    assert info.value.what == "weights"


def test_a_run_that_does_not_diverge_is_unchanged(tmp_path):
    bench = blobs(n_tasks=2, per_class=32)
    losses: list[float] = []

    class Recording(Finetune):
        def loss(self, batch, task):
            loss = super().loss(batch, task)
            losses.append(float(loss.detach()) * len(batch))
            return loss

    events = tmp_path / "events.jsonl"
    fit(_model(bench), bench, Recording(), epochs=1, batch_size=8, run_dir=tmp_path)
    assert not (tmp_path / DIVERGED).exists()
    first = json.loads(events.read_text().splitlines()[0])["loss"]
    assert first == sum(losses[:8]) / 64  # the mean loss, as before the check


def test_diverged_pickles_with_where_it_happened():
    import pickle

    e = pickle.loads(pickle.dumps(Diverged(2, 3, 4, "weights")))
    assert (e.task, e.epoch, e.step, e.what) == (2, 3, 4, "weights")
    assert str(e) == str(Diverged(2, 3, 4, "weights"))


# ---------------------------------------------------------------------- the command line
def test_diverging_run_is_one_line_exit_3_and_a_marked_folder(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--method", "ewc", *FAST, "--set", "lr=1000", "--out", str(out)]
    assert main(argv) == EXIT_DIVERGED == 3
    lines = _error_lines(capsys)
    assert len(lines) == 2, lines  # the announcement, then the one line
    record = json.loads((out / DIVERGED).read_text())
    where = f"task {record['task']}, epoch {record['epoch']}, step {record['step']}"
    assert lines[1].startswith("retain: training diverged: non-finite loss at " + where)
    assert f"{out} is marked diverged" in lines[1]


def test_a_normal_run_exits_0_and_is_not_marked(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--method", "ewc", *FAST, "--out", str(out)]) == 0
    assert (out / "metrics.json").is_file() and not (out / DIVERGED).exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--set", "lr=.nan"], "lr must be a finite number, got nan"),
        (["--set", "lr=.inf"], "lr must be a finite number, got inf"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--set", "lr_gamma=-.inf"], "lr_gamma must be a finite number"),
        (["--set", "momentum=.nan"], "momentum must be a finite number"),
        (["--method", "ewc", "--set", "method_args.lamb=.nan"], "lamb must be a finite number"),
        (
            ["--method", "ewc", "--set", "method_args.importance_args.eps=.inf"],
            "importance_args.eps must be a finite number",
        ),
        (["--set", "model_args.dropout=.nan"], "model_args.dropout must be a finite number"),
    ],
)
def test_non_finite_config_values_are_refused_up_front(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    assert main([*RUN, *FAST, "--out", str(out), *argv]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and expected in lines[0], lines
    assert not out.exists()


def test_make_method_refuses_non_finite_arguments():
    with pytest.raises(ValueError, match="lamb must be a finite number"):
        make_method("ewc", lamb=math.inf)
    with pytest.raises(ValueError, match=r"importance_args\.eps must be a finite number"):
        make_method("ewc", importance_args={"eps": math.nan})


def test_fit_refuses_a_non_finite_lr(bench):
    with pytest.raises(ValueError, match="lr must be a finite number"):
        fit(_model(bench), bench, make_method("finetune"), lr=math.nan)


# ---------------------------------------------------------------------- compare and report
def test_compare_shows_a_diverged_trial_and_never_ranks_it(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [
        "compare", "--benchmark", "split-digits", "--methods", "finetune,ewc", "--seeds", "1",
        "--set", "batch_size=32", "--set", "ewc:lr=1000", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if line.startswith("| ewc"))
    assert "diverged" in row and "**" not in row
    trials = json.loads((out / "trials.json").read_text())["trials"]
    status = {name.split("-")[2]: entries[-1]["status"] for name, entries in trials.items()}
    assert status == {"finetune": "ok", "ewc": "diverged"}
    assert main(argv) == 0  # run again: the diverged trial is not retried
    trials = json.loads((out / "trials.json").read_text())["trials"]
    ewc = next(v for k, v in trials.items() if "-ewc-" in k)
    assert [(e["action"], e["status"]) for e in ewc] == [
        ("start", "diverged"),
        ("diverged", "diverged"),
    ]


def test_report_never_ranks_a_diverged_run(tmp_path):
    bench = blobs(n_tasks=2, per_class=40)
    for name, lr in (("a", 0.001), ("b", 0.01), ("best", 0.5)):
        run = tmp_path / name
        fit(_model(bench), bench, make_method("finetune"), epochs=2, lr=lr, run_dir=run)
        config = {"benchmark": "blobs", "method": "finetune", "lr": lr, "seed": 0}
        (run / "config.yaml").write_text(json.dumps(config))
    before = markdown_table(make_report(collect([tmp_path]), figures=False).sections[0].table)
    best_row = next(line for line in before.splitlines() if "lr=0.5" in line)
    assert "**" in best_row  # it ranks first while finished ...
    (tmp_path / "best" / DIVERGED).write_text(json.dumps(Diverged(1, 0, 3).record()))
    report = make_report(collect([tmp_path]))  # ... and never once marked diverged
    table = markdown_table(report.sections[0].table)
    row = next(line for line in table.splitlines() if "lr=0.5" in line)
    assert "diverged" in row and "**" not in row
    assert "**" in table  # the finished runs are still ranked among themselves
    assert all("lr=0.5" not in fig.caption for fig in report.sections[0].figures)


# ---------------------------------------------------------------------- user data
def _data(n=40):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, generator=g), torch.arange(n) % 4


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_user_data_is_refused_naming_the_tensor(bad):
    x, y = _data()
    xt, yt = _data(16)
    x[7, 1] = bad
    with pytest.raises(DataError, match="train inputs hold NaN or infinite values") as info:
        benchmark_from_tensors(x, y, xt, yt, n_tasks=2)
    assert "sample 7" in str(info.value)
    with pytest.raises(DataError, match="test inputs hold NaN"):
        benchmark_from_tensors(xt, yt, x, y, n_tasks=2)


def test_non_finite_dataset_is_refused():
    from torch.utils.data import TensorDataset

    x, y = _data()
    x[3, 0] = math.nan
    with pytest.raises(DataError, match="train inputs hold NaN or infinite values"):
        benchmark_from_datasets(TensorDataset(x, y), TensorDataset(*_data(16)), n_tasks=2)
