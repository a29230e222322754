"""One markdown table from one or more ``benchmarks/table.py --json`` files.

Rows are ``method`` entries (mean ± std over the seeds of each entry, median wall time). Runs
of the same (benchmark, method) entry merge across files by seed, so a table measured in
several processes (e.g. one per seed) becomes one; a seed already seen for an entry is skipped
(the first file wins). Used for the tables in docs/RESULTS.md:

    python benchmarks/results_table.py docs/results/baselines-split-fmnist-*.json
    python benchmarks/results_table.py --columns tag_acc,taw_acc FILE.json
    python benchmarks/results_table.py --columns taw_acc,taw_bwt,fwt_one,blocked FILES...

Derived columns:

* ``fwt_one``: forward transfer against ``one`` (a fresh model per task, the SPG paper's
  reference), ``mean_t (R[t][t] - ONE[t][t])`` per seed, with the diagonal's mean taken from
  ACC and BWT (``mean_t R[t][t] = ACC - (T - 1) / T * BWT``); needs a ``one`` entry of the same
  benchmark and seed.
* ``blocked``: the fraction of weights no later task can change after the last task: SPG's
  fully blocked parameters (``blocked_total``) or HAT's mask capacity in use.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

COLUMNS = {
    "taw_acc": "TAw ACC",
    "taw_bwt": "TAw BWT",
    "taw_forgetting": "TAw forg.",
    "tag_acc": "TAg ACC",
    "tag_bwt": "TAg BWT",
    "tag_forgetting": "TAg forg.",
    "fwt_one": "FWT vs one",
    "blocked": "blocked (%)",
}
DEFAULT = "taw_acc,taw_bwt,tag_acc,tag_bwt,tag_forgetting"


def mean_std(values: list[float | None]) -> str:
    """``mean ± std`` in percent (std over seeds; a single value alone); ``n/a`` if none."""
    v = [x * 100 for x in values if x is not None and x == x]
    if not v:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.1f}"
    return f"{statistics.fmean(v):.1f} ± {statistics.stdev(v):.1f}"


def merged(paths: list[str]) -> dict[tuple[str, str], dict[int, dict]]:
    """``{(benchmark, method): {seed: run}}`` in first-seen order; the first file wins a seed."""
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for row in data["rows"]:
            runs = out.setdefault((row["benchmark"], row["method"]), {})
            for run in row["runs"]:
                runs.setdefault(run["seed"], run)
    return out


def diagonal(run: dict, tasks: int | None = None) -> float:
    """``mean_t R[t][t]`` (task-aware) from ACC and BWT; ``tasks`` for files from before the
    final row was saved."""
    T = len(run["taw_final_row"]) if "taw_final_row" in run else tasks
    if T is None:
        raise KeyError("taw_final_row (pass --tasks for older files)")
    return run["taw_acc"] - (T - 1) / T * run["taw_bwt"] if T > 1 else run["taw_acc"]


def blocked(run: dict) -> float | None:
    extra = run.get("extra") or {}
    if "blocked_total" in extra:
        return extra["blocked_total"]
    return (extra.get("capacity") or {}).get("total", {}).get("used_frac")


def value(run: dict, column: str, one: dict[int, dict], tasks: int | None) -> float | None:
    if column == "blocked":
        return blocked(run)
    if column == "fwt_one":
        ref = one.get(run["seed"])
        return None if ref is None else diagonal(run, tasks) - diagonal(ref, tasks)
    return run.get(column)


def rows(paths: list[str], columns: list[str], tasks: int | None = None) -> list[str]:
    table = merged(paths)
    out = []
    for (bench, method), by_seed in table.items():
        runs = list(by_seed.values())
        one = table.get((bench, "one"), {})
        cells = [mean_std([value(r, c, one, tasks) for r in runs]) for c in columns]
        seconds = statistics.median(r["seconds"] for r in runs)
        tail = f" | {len(runs)} | {seconds:.0f} |"
        out.append(f"| {method} | " + " | ".join(cells) + tail)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="JSON files written by benchmarks/table.py --json")
    p.add_argument("--columns", default=DEFAULT, help=f"comma-separated, from {', '.join(COLUMNS)}")
    p.add_argument("--tasks", type=int, help="number of tasks, for files without final rows")
    args = p.parse_args(argv)
    columns = args.columns.split(",")
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        print(f"results_table: unknown column(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        body = rows(args.files, columns, args.tasks)
    except (OSError, json.JSONDecodeError, KeyError) as e:
        print(f"results_table: cannot read the tables: {e}", file=sys.stderr)
        return 2
    print("| method | " + " | ".join(COLUMNS[c] for c in columns) + " | seeds | time (s) |")
    print("|---|" + "---|" * (len(columns) + 2))
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
