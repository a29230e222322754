"""Data-parallel training on CPU: one run in 1 process (1 and 2 threads) against the same run
in 2 processes of 1 thread each (``torchrun``, Gloo), on the same cores.

Every setting trains the same config and seed through ``retain run``; the settings alternate
for ``--repeats`` rounds so that machine noise hits all of them, and the medians are reported:
training seconds (the sum of ``timings.json``'s seconds per task: training and evaluation,
process 0's clock) and wall seconds of the whole command (start-up and, for ``torchrun``, the
rendezvous included), each as a ratio to 1 process with 1 thread. The last column checks that
the runs agree: the largest difference of final task-aware accuracy from the 1-process run.

    python benchmarks/data_parallel.py --benchmark split-fmnist --model alexnet \\
        --set benchmark_args.train_per_class=400 --set epochs=1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "1 process, 1 thread": (1, 1),
    "1 process, 2 threads": (1, 2),
    "2 processes x 1 thread (torchrun)": (2, 1),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(args: argparse.Namespace, processes: int, threads: int, out: Path) -> dict:
    cli = ["-m", "retain.cli", "run", "--benchmark", args.benchmark, "--method", args.method]
    cli += ["--model", args.model, "--seed", str(args.seed), "--threads", str(threads)]
    cli += ["--out", str(out), "--quiet"]
    for pair in args.set:
        cli += ["--set", pair]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        cmd += ["--master_port", str(_free_port()), *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    timings = json.loads((out / "timings.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "train": sum(timings["seconds_per_task"]),
        "wall": wall,
        "final": metrics["task_aware"]["rows"][-1],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--benchmark", default="split-fmnist")
    p.add_argument("--method", default="finetune")
    p.add_argument("--model", default="mlp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="config overrides, as retain run")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, (processes, threads) in SETTINGS.items():
                out = Path(tmp) / f"{r}-{processes}-{threads}"
                res = run_once(args, processes, threads, out)
                results[name].append(res)
                print(
                    f"repeat {r}: {name}: train {res['train']:.2f}s, wall {res['wall']:.2f}s",
                    file=sys.stderr,
                )

    base = next(iter(SETTINGS))
    train0 = statistics.median(r["train"] for r in results[base])
    wall0 = statistics.median(r["wall"] for r in results[base])
    reference = results[base][0]["final"]
    print(
        f"benchmark {args.benchmark}, model {args.model}, method {args.method}, "
        f"set {' '.join(args.set) or '-'}, seed {args.seed}, repeats {args.repeats} (medians)"
    )
    print("| setting | train s | train ratio | wall s | wall ratio | max TAw diff (points) |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        train = statistics.median(r["train"] for r in runs)
        wall = statistics.median(r["wall"] for r in runs)
        diff = max(
            abs(a - b) * 100 for run in runs for a, b in zip(run["final"], reference, strict=True)
        )
        print(
            f"| {name} | {train:.2f} | {train / train0:.3f} | {wall:.2f} | {wall / wall0:.3f} "
            f"| {diff:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
