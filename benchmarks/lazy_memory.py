"""Memory and time of stored against lazy (computed when read) permuted / rotated tasks.

Each variant runs in its own fresh process, which builds the benchmark and then trains
``finetune`` on an MLP for one epoch per task with evaluation, as ``retain run`` would. Reported:
peak resident memory of the process, seconds to build the benchmark, seconds to train and
evaluate (CPU time, one thread), and whether both variants ended with identical accuracies.
``--epochs 0`` only builds the benchmark and touches every task once (memory without training).

    python benchmarks/lazy_memory.py --benchmark rotated-fmnist --tasks 10 --epochs 0
    python benchmarks/lazy_memory.py --benchmark rotated-fmnist --tasks 2 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(benchmark: str, tasks: int, lazy: bool, epochs: int) -> dict:
    import torch

    from retain.data import get_benchmark
    from retain.engine import fit
    from retain.methods import make_method
    from retain.models import build_model

    torch.set_num_threads(1)
    t0 = time.process_time()
    bench = get_benchmark(benchmark, n_tasks=tasks, lazy=lazy)
    built = time.process_time() - t0
    torch.manual_seed(0)
    model = build_model("mlp", bench.input_shape, bench.classes_per_task, hidden=[400, 400])
    t0 = time.process_time()
    if epochs:
        result = fit(model, bench, make_method("finetune"), epochs=epochs, batch_size=64, lr=0.05)
        rows = result.task_aware.rows
    else:  # read one batch of every task, as the first step of training would
        rows = [[float(t.x_train[torch.arange(64)].sum()) for t in bench]]
    trained = time.process_time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {
        "peak_mib": peak,
        "build_s": built,
        "fit_s": trained,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="rotated-fmnist")
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--child", choices=["stored", "lazy"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        out = child(args.benchmark, args.tasks, args.child == "lazy", args.epochs)
        print(json.dumps(out))
        return 0
    res = {}
    for variant in ("stored", "lazy"):
        cmd = [sys.executable, __file__, "--child", variant, "--benchmark", args.benchmark]
        cmd += ["--tasks", str(args.tasks), "--epochs", str(args.epochs)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"lazy_memory: the {variant} run failed:\n{done.stderr}", file=sys.stderr)
            return 1
        res[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    s, z = res["stored"], res["lazy"]
    setup = f"{args.tasks} tasks, MLP 400-400, finetune, {args.epochs} epoch(s), 1 thread"
    print(f"{args.benchmark}, {setup}")
    print("| tasks | peak memory (MiB) | build CPU s | fit CPU s |")
    print("|---|---|---|---|")
    for name, r in (("stored", s), ("lazy", z)):
        print(f"| {name} | {r['peak_mib']:.0f} | {r['build_s']:.1f} | {r['fit_s']:.1f} |")
    ratios = f"lazy / stored: memory {z['peak_mib'] / s['peak_mib']:.2f}"
    if args.epochs:
        ratios += f", fit time {z['fit_s'] / s['fit_s']:.2f}"
    print(ratios)
    what = "accuracy matrices" if args.epochs else "first batches of every task"
    print(f"identical {what}: {s['rows'] == z['rows']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
