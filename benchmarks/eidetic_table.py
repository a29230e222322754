"""Per-task tables for Eidetic Learning from ``benchmarks/table.py --json`` files.

For every entry: the accuracy of each task after the last one with the oracle task id (TAw) and
with routing or the argmax over heads (TAg), mean over seeds; for ``eidetic`` also the fraction
of neurons each task claimed and the router's test accuracy.

    python benchmarks/eidetic_table.py docs/results/eidetic-pmnist.json

Several files (seeds run as separate jobs) are merged into one table per benchmark, one run
per seed, the first file's.
"""

from __future__ import annotations

import json
import statistics
import sys


def mean(values) -> float:
    return statistics.fmean(values)


def merged(paths: list[str]) -> dict[str, list[dict]]:
    """Rows by benchmark, each ``(benchmark, method)`` once with the runs of every file (one
    run per seed, the first file's), so that seeds run as separate jobs form one table."""
    tables: dict[str, dict[str, dict]] = {}
    for path in paths:
        with open(path) as f:
            for row in json.load(f)["rows"]:
                same = tables.setdefault(row["benchmark"], {})
                kept = same.setdefault(row["method"], {**row, "runs": []})
                seeds = {r["seed"] for r in kept["runs"]}
                kept["runs"] += [r for r in row["runs"] if r["seed"] not in seeds]
    return {bench: list(rows.values()) for bench, rows in tables.items()}


def main(paths: list[str]) -> int:
    for rows in merged(paths).values():
        n_tasks = len(rows[0]["runs"][0]["taw_final_row"])
        head = " | ".join(f"T{t + 1}" for t in range(n_tasks))
        print(f"\n{rows[0]['benchmark']}\n")
        print(f"| method | accuracy after the last task | {head} | mean |")
        print("|---|---|" + "---|" * (n_tasks + 1))
        notes = []
        for row in rows:
            runs = row["runs"]
            name = row["method"].split(":")[0]
            for key, label in (
                ("taw_final_row", "oracle task id"),
                ("tag_final_row", "no task id"),
            ):
                if any(r[key] is None or any(v is None or v != v for v in r[key]) for r in runs):
                    continue
                per_task = [mean([r[key][t] for r in runs]) * 100 for t in range(n_tasks)]
                if name == "eidetic" and key == "tag_final_row":
                    label = "routed"
                cells = " | ".join(f"{v:.1f}" for v in per_task)
                print(f"| {name} | {label} | {cells} | {mean(per_task):.1f} |")
            if name == "eidetic":
                used = [
                    mean([r["extra"]["neurons_per_task"][t] for r in runs]) * 100
                    for t in range(n_tasks)
                ]
                cells = " | ".join(f"{v:.1f}" for v in used)
                print(f"| eidetic | neurons claimed (%) | {cells} | {sum(used):.1f} (sum) |")
                router = [r["extra"]["router_accuracy"]["test"] * 100 for r in runs]
                sd = statistics.stdev(router)
                notes.append(f"router test accuracy: {mean(router):.2f} ± {sd:.2f}")
        print("\n" + "\n".join(notes) if notes else "")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
