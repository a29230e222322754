"""ScrollNet's Table 1 layout from ``benchmarks/table.py --json`` files: one row per base
method, TAg and TAw accuracy alone / with ScrollNet-2 / with ScrollNet-4 (mean ± std over
seeds), and the median training time of ScrollNet-K over the base method's.

    python benchmarks/scrollnet_table.py docs/results/scrollnet-split-fmnist.json
"""

from __future__ import annotations

import json
import statistics
import sys

from results_table import mean_std  # benchmarks/ is on sys.path when run as a script


def main(paths: list[str]) -> int:
    for path in paths:
        with open(path) as f:
            rows = json.load(f)["rows"]
        by_base: dict[str, dict[str, list]] = {}
        for row in rows:
            label = row["method"]
            if label.startswith("scrollnet:"):
                opts = dict(kv.split("=", 1) for kv in label.split(":", 1)[1].split(","))
                base, variant = opts["base"], "S" + opts["splits"]
            else:
                base, variant = label.split(":")[0], "alone"
            by_base.setdefault(base, {})[variant] = row["runs"]
        print(f"\n**{rows[0]['benchmark']}**\n")
        print(
            "| base method | TAg: alone | ScrollNet-2 | ScrollNet-4 | TAw: alone | ScrollNet-2 "
            "| ScrollNet-4 | time S-2 / S-4 (x alone) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for base, runs in by_base.items():
            if not {"alone", "S2", "S4"} <= set(runs):
                continue
            t0 = statistics.median(r["seconds"] for r in runs["alone"])
            cells = [
                mean_std([r[k] for r in runs[v]])
                for k in ("tag_acc", "taw_acc")
                for v in ("alone", "S2", "S4")
            ]
            ratio = " / ".join(
                f"{statistics.median(r['seconds'] for r in runs[v]) / t0:.1f}" for v in ("S2", "S4")
            )
            print(f"| {base} | " + " | ".join(cells) + f" | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
