"""Markdown tables of the capacity reports of masked methods (``metrics["method"]["capacity"]``).

Input: the JSON written by ``benchmarks/table.py --json`` (every run's summary numbers, with
the method's ``extra_metrics()`` under ``extra``). Usage::

    python -m retain.report.mask_report runs.json [more.json ...]

prints, per benchmark, (1) ACC, BWT (task-aware), weights used after the last task, mask memory
(raw bits as KiB, bit-packed and entropy-coded bytes as KiB), CAP and wall time, mean ± std over
seeds; (2) the fraction of every layer's weights in use after each task (mean over seeds),
layers named as the backbone's modules (:func:`layer_name`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

#: the prefix some methods' reports put before a layer's name (SPG's parameters are named from
#: the whole model, the masked methods' layers from the backbone)
BACKBONE_PREFIX = "backbone."


def layer_name(name: str) -> str:
    """One naming for a layer in every report: its module name in the backbone
    (``backbone.layers.0`` -> ``layers.0``)."""
    return name.removeprefix(BACKBONE_PREFIX)


def _ms(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    vals = [v * scale for v in values if v is not None and v == v]
    if not vals:
        return "n/a"
    mu = statistics.fmean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{mu:.{digits}f} ± {sd:.{digits}f}"


def _capacity(run: dict[str, Any]) -> dict[str, Any] | None:
    extra = run.get("extra") or {}
    cap = extra.get("capacity") if isinstance(extra, dict) else None
    return cap or None


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| benchmark | method | TAw ACC | TAw BWT | used % | mask raw KiB | packed KiB "
        "| encoded KiB | CAP % | time (s) |"
    )
    lines = [head, "|" + "---|" * 10]
    for row in rows:
        runs = row["runs"]
        caps = [_capacity(r) for r in runs]
        tot = [c["total"] for c in caps if c]

        def col(key: str, scale: float = 1.0, digits: int = 2, _tot=tot) -> str:
            return _ms([t[key] for t in _tot], scale, digits) if _tot else "-"

        lines.append(
            f"| {row['benchmark']} | {row['method']} "
            f"| {_ms([r['taw_acc'] for r in runs], 100)} "
            f"| {_ms([r['taw_bwt'] for r in runs], 100)} "
            f"| {col('used_frac', 100, 1)} "
            f"| {col('mask_bits', 1 / 8 / 1024, 1)} "
            f"| {col('mask_bytes_packed', 1 / 1024, 1)} "
            f"| {col('mask_bytes_encoded', 1 / 1024, 1)} "
            f"| {col('cap', 100, 1)} "
            f"| {_ms([r['seconds'] for r in runs], 1, 1)} |"
        )
    return "\n".join(lines)


def layer_table(rows: list[dict[str, Any]]) -> str:
    n_tasks = 0
    body = []
    for row in rows:
        caps = [c for c in (_capacity(r) for r in row["runs"]) if c]
        if not caps:
            continue
        names = [*caps[0]["layers"], "total"]
        for name in names:
            hists = [
                (c["total"] if name == "total" else c["layers"][name])["used_frac_after_task"]
                for c in caps
            ]
            t = len(hists[0])
            n_tasks = max(n_tasks, t)
            cells = [f"{100 * statistics.fmean(h[i] for h in hists):.1f}" for i in range(t)]
            body.append((row["benchmark"], row["method"], layer_name(name), cells))
    if not body:
        return ""
    head = "| benchmark | method | layer | " + " | ".join(f"{i + 1}" for i in range(n_tasks))
    lines = [head + " |", "|" + "---|" * (3 + n_tasks)]
    for bench, method, name, cells in body:
        cells = cells + [""] * (n_tasks - len(cells))
        lines.append(f"| {bench} | {method} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", help="JSON files of benchmarks/table.py --json")
    args = p.parse_args(argv)
    rows = []
    for f in args.files:
        rows += json.loads(Path(f).read_text())["rows"]
    print(summary_table(rows))
    print()
    print("Weights in use (% of the layer) after each task:")
    print()
    print(layer_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
