"""Baselines table: the replay, gradient-projection and regularisation baselines side by side.

Every cell is a ``retain compare`` trial (an ordinary run folder under ``--out``, skipped when
finished and resumed when interrupted, so the script can be run again after a stop), then one
markdown table and one JSON of mean ± std over seeds::

    python benchmarks/baselines_table.py --out runs/baselines --workers 2

Grid (the defaults): the methods of :data:`METHODS` on split-fmnist (5 tasks of 2 classes) and
permuted-fmnist in docs/RESULTS.md's domain-incremental setting (:data:`PERMUTED`: all 10 tasks,
1,000 training images per class per task, one 10-way head shared by every task, so TAw = TAg;
iCaRL refuses a shared head and has no row there), MLP 400-400, 1 epoch per task, seeds 0..2, SGD at
``lr`` 0.1 and batch 64 (the setting of docs/RESULTS.md's "Baselines" tables, where DER,
unlike at lr 0.01, holds), every buffer of :data:`MEMORY_SIZE` slots, class-incremental
training (``compare --protocol seen``; methods that fix their heads keep them, the table's
``heads`` column says which). Methods not registered in this checkout are skipped with a
note. Method-specific settings are in :data:`METHOD_SETTINGS` (applied only to the arguments a
method takes).

``--der-epochs 1,3,5`` adds DER at those epochs per task on split-fmnist, under the table's
setting and under the DER paper's seq-MNIST setting (:data:`DER_PAPER`), next to finetune at
the same epochs: whether DER's gain over fine-tuning needs more optimiser steps per task.

Quick check of the machinery (one seed, a few methods, one benchmark)::

    python benchmarks/baselines_table.py --out /tmp/bt --seeds 1 \\
        --methods finetune,er,der,derpp,agem --benchmarks split-fmnist --workers 1
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from retain import config_yaml

#: the methods of the table, in row order
METHODS = [
    "finetune",
    "er",
    "der",
    "derpp",
    "agem",
    "icarl",
    "gem",
    "er-ace",
    "xder",
    "gdumb",
    "rwalk",
    "mir",
]
#: permuted-fmnist as in docs/RESULTS.md's baselines: domain-incremental (permuted tasks share
#: their 10 classes: one shared head), 10 tasks of 10,000 training images (all 60,000 per task
#: would be 10x split-fmnist's steps)
PERMUTED = {"head": "shared", "benchmark_args.train_per_class": 1000}
#: methods that refuse a shared head (class-incremental by construction)
NEEDS_TASK_HEADS = {"icarl"}
#: benchmark -> config keys of its trials
BENCHMARKS: dict[str, dict[str, Any]] = {
    "split-fmnist": {},
    "permuted-fmnist": PERMUTED,
}
#: the shared setting (docs/RESULTS.md, "Baselines": SGD, lr 0.1, batch 64, 1 epoch)
LR = 0.1
BATCH_SIZE = 64
EPOCHS = 1
#: slots of every memory (``memory_size`` of each method that takes one)
MEMORY_SIZE = 200
#: method -> method arguments of its own (only those its ``__init__`` takes are applied).
#: Every other method runs with its documented defaults at the shared setting; add an entry
#: where a method's paper needs another value for this setting.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    # GEM's memory_size counts samples per task by default (the paper's): the total instead,
    # the same MEMORY_SIZE slots as every other buffer
    "gem": {"per_task": False},
    # GDumb retrains on its memory alone; its own `epochs` (default: the run's one epoch, which
    # is only the warm-up epoch at lr/10) chosen from 16/64 on seed 100
    # (benchmarks/baselines_grid.yaml), against the paper's 128-256
    "gdumb": {"epochs": 64},
}
#: DER's seq-MNIST setting for buffer 200 (Buzzega et al. 2020, Appendix; Mammoth's
#: best_args: lr 0.03, batch 10, minibatch 10, alpha 0.2, 1 epoch)
DER_PAPER: dict[str, Any] = {
    "lr": 0.03,
    "batch_size": 10,
    "method_args.alpha": 0.2,
    "method_args.minibatch_size": 10,
}
COLUMNS = [("TAw ACC", "taw_acc"), ("TAg ACC", "tag_acc"), ("TAg BWT", "tag_bwt")]


def registered_methods() -> dict[str, list[str]]:
    """Registered method name -> the names of its ``__init__`` arguments."""
    from retain.methods import REGISTRY

    return {
        name: list(inspect.signature(cls.__init__).parameters)[1:] for name, cls in REGISTRY.items()
    }


def method_sets(method: str, params: list[str]) -> list[str]:
    """``--set METHOD:method_args.KEY=VALUE`` pairs of ``method``: the memory size and its
    :data:`METHOD_SETTINGS`, each only if the method takes that argument."""
    wanted = {"memory_size": MEMORY_SIZE, **METHOD_SETTINGS.get(method, {})}
    return [f"{method}:method_args.{k}={json.dumps(v)}" for k, v in wanted.items() if k in params]


def compare_argv(
    benchmark: str,
    methods: list[str],
    params: dict[str, list[str]],
    seeds: str,
    out: Path,
    workers: int,
    epochs: int = EPOCHS,
    lr: float = LR,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """The ``retain compare`` arguments of one part of the grid."""
    argv = [
        "compare",
        "--benchmark",
        benchmark,
        "--methods",
        ",".join(methods),
        "--seeds",
        seeds,
        "--model",
        "mlp",
        "--epochs",
        str(epochs),
        "--lr",
        str(lr),
        "--threads",
        "1",
        "--protocol",
        "seen",
        "--workers",
        str(workers),
        "--out",
        str(out),
    ]
    keys = {"batch_size": BATCH_SIZE, **BENCHMARKS.get(benchmark, {}), **(extra or {})}
    for key, value in keys.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    for method in methods:
        for pair in method_sets(method, params[method]):
            argv += ["--set", pair]
    return argv


def run_compare(argv: list[str], dry_run: bool) -> int:
    """Run ``retain compare`` in a child process (its exit status; 0 for a dry run)."""
    code = "import sys; from retain.cli import main; sys.exit(main(sys.argv[1:]))"
    print("retain " + " ".join(argv), file=sys.stderr, flush=True)
    if dry_run:
        return 0
    return subprocess.call([sys.executable, "-c", code, *argv])


def read_runs(folder: Path) -> list[dict[str, Any]]:
    """The finished runs under ``folder``: config, summaries and training seconds."""
    runs = []
    for cfg in sorted(folder.glob("*/config.yaml")):
        metrics, timings = cfg.parent / "metrics.json", cfg.parent / "timings.json"
        if not metrics.exists():
            continue
        config = config_yaml.load(cfg.read_text())
        m = json.loads(metrics.read_text())
        t = json.loads(timings.read_text()) if timings.exists() else {}
        runs.append(
            {
                "folder": cfg.parent.name,
                "method": config["method"],
                "method_args": config.get("method_args") or {},
                "benchmark": config["benchmark"],
                "seed": config["seed"],
                "epochs": config["epochs"],
                "taw_acc": m["task_aware"]["summary"]["acc"],
                "taw_bwt": m["task_aware"]["summary"]["bwt"],
                "tag_acc": m["task_agnostic"]["summary"]["acc"],
                "tag_bwt": m["task_agnostic"]["summary"]["bwt"],
                "seconds": sum(t.get("seconds_per_task", [])) or math.nan,
            }
        )
    return runs


def mean_std(values: list[float], scale: float = 100.0) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    mu = statistics.fmean(vals) * scale
    sd = statistics.stdev(vals) * scale if len(vals) > 1 else 0.0
    return f"{mu:.1f} ± {sd:.1f}"


def current(runs: list[dict[str, Any]], params: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The runs made with today's method settings (:func:`method_sets`); trials a folder
    still holds from an earlier setting (another ``METHOD_SETTINGS`` entry) are left out,
    named on stderr, so that a row never mixes two settings."""
    kept = []
    for run in runs:
        wanted = {"memory_size": MEMORY_SIZE, **METHOD_SETTINGS.get(run["method"], {})}
        taken = params.get(run["method"], [])
        if all(run["method_args"].get(k) == v for k, v in wanted.items() if k in taken):
            kept.append(run)
        else:
            print(f"baselines_table: left out {run['folder']} (another setting)", file=sys.stderr)
    return kept


def summarize(runs: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """One row per method (in ``order``): per-seed values, and time over finetune's."""
    from retain.report.protocol import method_protocol

    rows = []
    for method in [m for m in order if any(r["method"] == m for r in runs)]:
        mine = [r for r in runs if r["method"] == method]
        row: dict[str, Any] = {
            "method": method,
            "heads": method_protocol(method, mine[0]["method_args"]),
            "seeds": sorted(r["seed"] for r in mine),
        }
        for key in ("taw_acc", "taw_bwt", "tag_acc", "tag_bwt", "seconds"):
            row[key] = [r[key] for r in mine]
        rows.append(row)
    base = next((r for r in rows if r["method"] == "finetune"), None)
    for row in rows:
        row["time_over_finetune"] = (
            statistics.fmean(row["seconds"]) / statistics.fmean(base["seconds"])
            if base
            else math.nan
        )
    return rows


def markdown(rows: list[dict[str, Any]], label: str = "method") -> str:
    head = [label, "heads", *(c for c, _ in COLUMNS), "seeds", "time / finetune"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row[label], str(row["heads"])]
        cells += [mean_std(row[k]) for _, k in COLUMNS]
        ratio = row["time_over_finetune"]
        cells += [str(len(row["seeds"])), "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def der_epochs_part(
    epochs: list[int], params: dict[str, list[str]], seeds: str, out: Path, args
) -> tuple[list[dict[str, Any]], int]:
    """DER and finetune on split-fmnist at each epoch count, under the table's setting and
    the DER paper's; rows labelled ``setting``."""
    rows, failed = [], 0
    settings = {"table": (LR, {}), "der-paper": (DER_PAPER["lr"], DER_PAPER)}
    for name, (lr, keys) in settings.items():
        common = {k: v for k, v in keys.items() if not k.startswith("method_args.")}
        common.pop("lr", None)
        scoped = {k: v for k, v in keys.items() if k.startswith("method_args.")}
        for e in epochs:
            folder = out / "der-epochs" / f"{name}-e{e}"
            argv = compare_argv(
                "split-fmnist",
                ["finetune", "der"],
                params,
                seeds,
                folder,
                args.workers,
                e,
                lr,
                common,
            )
            argv += [a for k, v in scoped.items() for a in ("--set", f"der:{k}={json.dumps(v)}")]
            failed += run_compare(argv, args.dry_run) != 0
            for row in summarize(read_runs(folder), ["finetune", "der"]):
                label = f"{row['method']}: {name}, {e} epoch(s)"
                rows.append({**row, "setting": label, "epochs": e})
    return rows, failed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder of the trials and tables")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated")
    p.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a list 0,4,7")
    p.add_argument("--workers", type=int, default=2, help="trials at a time (compare)")
    p.add_argument("--der-epochs", default="", help="e.g. 1,3,5: the DER epochs part")
    p.add_argument("--no-grid", action="store_true", help="only the --der-epochs part")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = registered_methods()
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = [m for m in wanted if m in params]
    notes = [f"{m}: not registered in this checkout, skipped" for m in wanted if m not in params]
    for note in notes:
        print(f"baselines_table: {note}", file=sys.stderr)
    tables: dict[str, list[dict[str, Any]]] = {}
    failed = 0
    if not args.no_grid and methods:
        for bench in [b.strip() for b in args.benchmarks.split(",") if b.strip()]:
            folder = args.out / "trials" / bench
            shared = BENCHMARKS.get(bench, {}).get("head") == "shared"
            here = [m for m in methods if not (shared and m in NEEDS_TASK_HEADS)]
            for m in sorted(set(methods) - set(here)):
                notes.append(f"{m}: refuses the shared head of {bench}, no row there")
            argv_ = compare_argv(bench, here, params, args.seeds, folder, args.workers)
            failed += run_compare(argv_, args.dry_run) != 0
            tables[bench] = summarize(current(read_runs(folder), params), here)
    der_rows: list[dict[str, Any]] = []
    if args.der_epochs:
        epochs = [int(e) for e in args.der_epochs.split(",")]
        der_rows, bad = der_epochs_part(epochs, params, args.seeds, args.out, args)
        failed += bad
    setting = (
        f"MLP 400-400, {EPOCHS} epoch per task, SGD lr {LR}, batch {BATCH_SIZE}, memory "
        f"{MEMORY_SIZE}, compare --protocol seen; permuted-fmnist: 10 tasks of 1,000 images "
        "per class, one shared head (domain-incremental, TAw = TAg)"
    )
    text = [f"# Baselines\n\n{setting}. Mean ± std over seeds; accuracies in %.\n"]
    text += [f"- {n}" for n in notes]
    for bench, rows in tables.items():
        text += [f"\n## {bench}\n", markdown(rows)]
    if der_rows:
        text += ["\n## DER by epochs per task (split-fmnist)\n", markdown(der_rows, "setting")]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "baselines.md").write_text("\n".join(text) + "\n")
    report = {
        "setting": setting,
        "lr": LR,
        "batch_size": BATCH_SIZE,
        "epochs": EPOCHS,
        "memory_size": MEMORY_SIZE,
        "benchmarks": BENCHMARKS,
        "method_settings": METHOD_SETTINGS,
        "der_paper": DER_PAPER,
        "notes": notes,
        "tables": tables,
        "der_epochs": der_rows,
    }
    (args.out / "baselines.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("\n".join(text))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
