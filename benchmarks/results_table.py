"""One markdown table from one or more ``benchmarks/table.py --json`` files.

Rows are ``method`` entries (mean ± std over the seeds of each entry, median wall time); an
entry whose label already appeared in an earlier file is skipped, so tables measured in several
runs merge into one. Used for the tables in docs/RESULTS.md:

    python benchmarks/results_table.py docs/results/baselines-split-fmnist-*.json
    python benchmarks/results_table.py --columns tag_acc,taw_acc FILE.json
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


def rows(paths: list[str], columns: list[str]) -> list[str]:
    seen: set[tuple[str, str]] = set()
    out = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for row in data["rows"]:
            key = (row["benchmark"], row["method"])
            if key in seen:
                continue
            seen.add(key)
            runs = row["runs"]
            cells = [mean_std([r.get(c) for r in runs]) for c in columns]
            seconds = statistics.median(r["seconds"] for r in runs)
            tail = f" | {len(runs)} | {seconds:.0f} |"
            out.append(f"| {row['method']} | " + " | ".join(cells) + tail)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="JSON files written by benchmarks/table.py --json")
    p.add_argument("--columns", default=DEFAULT, help=f"comma-separated, from {', '.join(COLUMNS)}")
    args = p.parse_args(argv)
    columns = args.columns.split(",")
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        print(f"results_table: unknown column(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        body = rows(args.files, columns)
    except (OSError, json.JSONDecodeError, KeyError) as e:
        print(f"results_table: cannot read the tables: {e}", file=sys.stderr)
        return 2
    print("| method | " + " | ".join(COLUMNS[c] for c in columns) + " | seeds | time (s) |")
    print("|---|" + "---|" * (len(columns) + 2))
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
