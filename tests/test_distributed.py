"""Data-parallel training (``torchrun``; :mod:`retain.engine.distributed`) on CPU with Gloo:
two processes see the gradient of the whole batch, stay identical, and end where one process
ends; evaluation sums both halves; process 0 alone writes; replay methods are refused."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from retain.engine import SetupError, distributed, fit
from retain.methods import make_method
from retain.models import ContinualModel
from tests.synthetic import TinyBackbone, blobs

# (method, its arguments, batch size): uneven shards (13 -> 6 + 7; the last batch of 80 has 2
# rows) and a last batch of one row, which process 1 meets with an empty shard (79)
CASES = [
    ("finetune", {}, 13),
    ("ewc", {"lamb": 100.0}, 13),
    ("spg", {}, 13),
    ("hat", {}, 16),
    ("wsn", {"capacity": 0.5}, 13),
    ("packnet", {}, 16),
    ("si", {}, 79),
]


class BNBackbone(nn.Module):
    """TinyBackbone with a BatchNorm, whose statistics the processes must share."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.out_features = 16

    def forward(self, x):
        return self.net(x.flatten(1))


class FirstGradient:
    """Wraps a method's ``after_backward`` to keep the gradients of the first step."""

    def __init__(self, method) -> None:
        self.grads: list[torch.Tensor] | None = None
        inner = method.after_backward

        def after_backward(batch, task) -> None:
            if self.grads is None:
                params = [p for p in method.model.parameters() if p.grad is not None]
                self.grads = [p.grad.clone() for p in params]
            inner(batch, task)

        method.after_backward = after_backward


def _train(
    name: str, args: dict, batch_size: int, run_dir=None, bn: bool = False, dropout=0.0, **kw
):
    torch.manual_seed(0)
    bench = blobs()
    backbone = BNBackbone() if bn else TinyBackbone(dropout=dropout)
    model = ContinualModel(backbone, bench.classes_per_task)
    if bn and os.environ.get("RANK") == "1":  # as if process 1 had been initialised apart
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
    method = make_method(name, **args)
    first = FirstGradient(method)
    result = fit(
        model, bench, method, epochs=3, lr=0.1, batch_size=batch_size, run_dir=run_dir, **kw
    )
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "aware": result.task_aware.rows,
        "agnostic": result.task_agnostic.rows,
        "first_grads": first.grads,
        "memory": method.memory.get_all() if hasattr(method, "memory") else None,
    }


def _worker(rank: int, port: int, out: str, cases: list, bn: bool, dropout: float) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    results = {}
    for i, (name, args, batch_size) in enumerate(cases):
        run_dir = Path(out) / f"run-{i}-rank{rank}"  # process 1 must not write to its own
        results[i] = _train(name, args, batch_size, run_dir=run_dir, bn=bn, dropout=dropout)
        results[i]["active"] = distributed.active() and distributed.world_size() == 2
    torch.save(results, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


class _Stop(Exception):
    pass


def _resume_worker(rank: int, port: int, out: str) -> None:
    """Case 0 (finetune), stopped after its first task, then resumed from the checkpoint."""
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    name, args, batch_size = CASES[0]

    def stop(task_index, result):
        raise _Stop

    with pytest.raises(_Stop):
        _train(name, args, batch_size, run_dir=Path(out) / "resumed", on_task_end=stop)
    torch.distributed.barrier()  # process 0 has written the checkpoint
    result = _train(name, args, batch_size, run_dir=Path(out) / "resumed", resume=True)
    torch.save(result, Path(out) / f"resumed{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path: Path, cases: list, bn: bool = False, dropout=0.0) -> tuple[dict, dict]:
    args = (_free_port(), str(tmp_path), cases, bn, dropout)
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    return torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return tmp, *_spawn(tmp, CASES)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] for c in CASES])
def test_two_processes_train_as_one(two_processes, case):
    """Each process saw the whole batch's gradient at the first step, both end with the same
    weights (bitwise), and those are one process's weights up to float summation order; the
    accuracy matrices are one process's."""
    _, r0, r1 = two_processes
    name, args, batch_size = CASES[case]
    alone = _train(name, args, batch_size)
    assert r0[case]["active"] and r1[case]["active"]
    for r in (r0[case], r1[case]):
        assert len(r["first_grads"]) == len(alone["first_grads"])
        for g, g_alone in zip(r["first_grads"], alone["first_grads"], strict=True):
            torch.testing.assert_close(g, g_alone, rtol=1e-5, atol=1e-6)
    for key, value in r0[case]["state"].items():
        assert torch.equal(value, r1[case]["state"][key]), key
        torch.testing.assert_close(value, alone["state"][key], rtol=1e-4, atol=1e-5)
    assert r0[case]["aware"] == r1[case]["aware"] == alone["aware"]


def test_only_process_zero_writes_and_the_run_resumes_alone(two_processes):
    tmp, _, _ = two_processes
    run = tmp / "run-0-rank0"  # finetune: events and metrics as a one-process run writes them
    assert not any((tmp / f"run-{i}-rank1").exists() for i in range(len(CASES)))
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["task_aware"]["rows"]) == 3
    events = (run / "events.jsonl").read_text().splitlines()
    assert len(events) == 3 * 3  # one line per epoch, not one per process
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",  # fit writes the run folder retain run writes
        "environment.json",
        "events.jsonl",
        "metrics.json",
        "timings.json",
    ]


def test_a_stopped_data_parallel_run_resumes_to_the_uninterrupted_result(two_processes):
    tmp, r0, _ = two_processes
    mp.spawn(_resume_worker, args=(_free_port(), str(tmp)), nprocs=2, join=True)
    for rank in (0, 1):
        resumed = torch.load(tmp / f"resumed{rank}.pt")
        for key, value in r0[0]["state"].items():
            assert torch.equal(value, resumed["state"][key]), key
    assert (tmp / "resumed" / "metrics.json").read_bytes() == (
        tmp / "run-0-rank0" / "metrics.json"
    ).read_bytes()


def test_batchnorm_statistics_and_initial_weights_are_process_zeros(tmp_path):
    """With BatchNorm the two processes normalise different shards, but process 0's running
    statistics are broadcast after every step, and its initial weights before training
    (process 1 starts from other weights here): both end identical."""
    r0, r1 = _spawn(tmp_path, [("finetune", {}, 16)], bn=True)
    for key, value in r0[0]["state"].items():
        assert torch.equal(value, r1[0]["state"][key]), key
    assert any("running_mean" in k for k in r0[0]["state"])


def test_random_draws_after_training_agree_across_processes(tmp_path):
    """Dropout on uneven shards draws different amounts of random numbers on each process;
    the global generator is brought back in step after every epoch, so that what a method
    draws from it later (iCaRL's random exemplars here) is the same everywhere."""
    case = ("icarl", {"memory_size": 30, "selection": "random"}, 13)
    r0, r1 = _spawn(tmp_path, [case], dropout=0.3)
    for key, value in r0[0]["memory"].items():
        assert torch.equal(value, r1[0]["memory"][key]), key
    for key, value in r0[0]["state"].items():
        assert torch.equal(value, r1[0]["state"][key]), key


def test_shards_cover_the_batch_in_order():
    for n in (1, 2, 7, 13, 64):
        for size in (1, 2, 3, 4):
            bounds = [distributed.shard_bounds(n, i, size) for i in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


@pytest.mark.parametrize("name", ["er", "der", "derpp", "agem", "eidetic"])
def test_methods_with_a_replay_buffer_or_their_own_loop_are_refused(monkeypatch, name):
    monkeypatch.setenv("WORLD_SIZE", "2")
    bench = blobs()
    model = ContinualModel(TinyBackbone(), bench.classes_per_task)
    with pytest.raises(SetupError, match="cannot train data-parallel"):
        fit(model, bench, make_method(name), epochs=1)
    assert not torch.distributed.is_initialized()


def test_torchrun_cli_run_writes_one_folder(tmp_path):
    """``torchrun -m retain.cli run`` with two processes: one table on stdout, one run folder,
    and the folder's accuracies are a one-process run's; without --out it is refused."""
    common = ["--benchmark", "split-digits", "--method", "ewc", "--epochs", "2", "--seed", "1"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(_free_port()), "-m", "retain.cli", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "two"
    proc = subprocess.run(
        [*torchrun, *common, "--out", str(out)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("task-aware accuracy") == 1  # printed by process 0 only
    alone = tmp_path / "one"
    cmd = [sys.executable, "-m", "retain.cli", "run", *common, "--out", str(alone)]
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    two_m = json.loads((out / "metrics.json").read_text())
    one_m = json.loads((alone / "metrics.json").read_text())
    assert two_m["task_aware"]["rows"] == one_m["task_aware"]["rows"]
    env_json = json.loads((out / "environment.json").read_text())
    assert env_json["processes"] == 2

    refused = subprocess.run(
        [*torchrun, *common], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert refused.returncode != 0
    assert "needs --out or --resume" in refused.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_many_trial_commands_are_refused_under_torchrun(monkeypatch, tmp_path, capsys, command):
    from retain.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.chdir(tmp_path)
    args = ["--benchmark", "split-digits", "--methods", "finetune"]
    argv = [command, *args] if command == "compare" else [command, str(tmp_path / "s.yaml")]
    assert main(argv) == 2
    assert "start single runs with torchrun" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_world_size_is_one_line(monkeypatch, capsys):
    from retain.cli import main

    monkeypatch.setenv("WORLD_SIZE", "abc")
    assert main(["run", "--benchmark", "split-digits", "--method", "finetune"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "retain: error: WORLD_SIZE must be an integer, got 'abc'"
