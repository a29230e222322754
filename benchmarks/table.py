"""Accuracy table: methods x benchmarks x seeds through ``retain.fit``, mean ± std over seeds.

Each cell is a full run built exactly as ``retain run`` builds it (same config keys), so any
line of the table can be reproduced with the CLI. Example::

    python benchmarks/table.py --methods finetune,joint,one --benchmarks split-fmnist \\
        --seeds 0,1,2 --set epochs=2 --set lr=0.01

Entries are separated by ';'. A method or benchmark may carry its own settings after a
colon, comma-separated::

    --methods "finetune;er:memory_size=200;ewc:lamb=100,lr=0.05"
    --methods "scrollnet:base=ewc,splits=4,base_args.lamb=5000"   (nested: dotted keys)

Keys after the colon go to ``method_args`` (methods) or ``benchmark_args`` (benchmarks) unless
they are top-level config keys (e.g. ``lr``), which then apply to that entry only.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from retain.engine import fit, runio
from retain.experiment import FIELDS, build, parse_set, resolve


def parse_entries(text: str, args_key: str) -> list[tuple[str, str, dict]]:
    """``"a;b:x=1,y=2"`` -> [(label, name, overrides)] with overrides as config updates."""
    out = []
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        name, _, rest = entry.partition(":")
        overrides: dict = {}
        if rest:
            for key, value in parse_set(rest.split(",")).items():
                top = key.split(".", 1)[0]  # "base_args.lamb" -> method_args.base_args.lamb
                overrides[key if top in FIELDS else f"{args_key}.{key}"] = value
        out.append((entry, name.strip(), overrides))
    return out


def run_cell(base_sets: list[str], overrides: dict, seed: int, threads: int) -> dict:
    sets = [*base_sets, *(f"{k}={json.dumps(v)}" for k, v in overrides.items()), f"seed={seed}"]
    config = resolve(None, None, sets)
    torch.set_num_threads(threads)
    benchmark, model, method = build(config)
    t0 = time.perf_counter()
    result = fit(model, benchmark, method, config.train_config(), seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    m = result.metrics()
    return {
        "seed": seed,
        "seconds": seconds,
        **{f"taw_{k}": v for k, v in m["task_aware"]["summary"].items()},
        **{f"tag_{k}": v for k, v in m["task_agnostic"]["summary"].items()},
        "taw_final_row": m["task_aware"]["rows"][-1],  # per-task accuracy after the last task
        "tag_final_row": m["task_agnostic"]["rows"][-1],
        "extra": m.get("method", {}),
    }


def mean_std(values: list[float], scale: float = 100.0) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    mu = statistics.fmean(vals) * scale
    sd = statistics.stdev(vals) * scale if len(vals) > 1 else 0.0
    return f"{mu:.2f} ± {sd:.2f}"


COLUMNS = [
    ("TAw ACC", "taw_acc"),
    ("TAw BWT", "taw_bwt"),
    ("TAg ACC", "tag_acc"),
    ("TAg BWT", "tag_bwt"),
    ("TAg forg.", "tag_forgetting"),
]


def cap(run: dict) -> float | None:
    """CAP (WSN's capacity: used weights + encoded task masks, fraction of the dense weights)
    from a masked method's capacity report, None for methods without one."""
    return ((run.get("extra") or {}).get("capacity") or {}).get("total", {}).get("cap")


def markdown(rows: list[dict]) -> str:
    columns = list(COLUMNS)
    if any(cap(r) is not None for row in rows for r in row["runs"]):
        columns.append(("CAP", "cap"))  # only when a masked method reports one
    head = "| benchmark | method | " + " | ".join(c for c, _ in columns) + " | time (s) |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for row in rows:
        cells = [
            mean_std([cap(r) if k == "cap" else r[k] for r in row["runs"]]) for _, k in columns
        ]
        secs = mean_std([r["seconds"] for r in row["runs"]], scale=1.0)
        lines.append(
            f"| {row['benchmark']} | {row['method']} | " + " | ".join(cells) + f" | {secs} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", required=True, help="';'-separated method entries")
    p.add_argument("--benchmarks", required=True, help="';'-separated benchmark entries")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    p.add_argument("--set", action="append", default=[], help="config key=value for every cell")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write every run's numbers to this file")
    args = p.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for blabel, bname, bover in parse_entries(args.benchmarks, "benchmark_args"):
        for mlabel, mname, mover in parse_entries(args.methods, "method_args"):
            overrides = {"benchmark": bname, **bover, "method": mname, **mover}
            runs = []
            row = {"benchmark": blabel, "method": mlabel, "runs": runs}
            for seed in seeds:
                r = run_cell(args.set, overrides, seed, args.threads)
                runs.append(r)
                if args.json:  # after every run, so an interrupted table keeps what it measured
                    save_json(args.json, [*rows, row])
                print(
                    f"{blabel:>24} {mlabel:<28} seed {seed}: TAw {100 * r['taw_acc']:.2f} "
                    f"TAg {100 * r['tag_acc']:.2f} BWT(TAg) {100 * r['tag_bwt']:.2f} "
                    f"{r['seconds']:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append(row)
    print(markdown(rows))
    if args.json:
        save_json(args.json, rows)
    return 0


def save_json(path: str, rows: list[dict]) -> None:
    """``{"argv", "rows"}``, written atomically."""
    runio.atomic_write_text(Path(path), json.dumps({"argv": sys.argv, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
