"""Record (or check) the metrics.json of every registered method on a small fixed set of runs.

A refactoring that must not change behaviour is checked by recording the set before and
comparing after: every file must be byte-identical, or each difference is a named bug fix.

    python benchmarks/behaviour_snapshot.py --out /tmp/before            # record
    python benchmarks/behaviour_snapshot.py --out /tmp/after --check /tmp/before

``benchmarks/behaviour_snapshot.json`` is the recording made before the method-contract
redesign (torch 2.13.0 CPU, one thread), for ``--check`` without recording first (byte
identity holds for the same torch build and CPU kind).

The set: every registered method (ScrollNet over two bases) on split-mnist5k and
permuted-mnist5k, 2 epochs per task, seed 0, the default MLP narrowed to 100 units and the
first 3 tasks (``benchmark_args.n_tasks``), plus a few variants that take other code paths
(class-incremental ``loss_heads=seen``, SPG-FI, Eidetic's router). Each run goes through the
same config path as ``retain run`` and runs in a forked child, 2 at a time, one thread each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

BENCHMARKS = {
    "split-mnist5k": {"n_tasks": 5},
    "permuted-mnist5k": {"n_tasks": 3},
}
COMMON = {
    "epochs": 2,
    "seed": 0,
    "batch_size": 32,
    "lr": 0.05,
    "model_args": {"hidden": [100, 100]},
}
#: method -> overrides of the common config (method_args and others)
SPECIAL: dict[str, dict] = {
    "scrollnet": {"method_args": {"base": "finetune", "splits": 2}},
    "eidetic": {"method_args": {"patience": 1, "max_recovery_epochs": 1, "step": 0.3}},
    "dynamos": {"model": "reduced-resnet18", "model_args": {"nf": 4}, "epochs": 1},
}
#: extra runs: name -> (method, overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "scrollnet-ewc": ("scrollnet", {"method_args": {"base": "ewc", "splits": 2}}),
    "er-seen": ("er", {"method_args": {"loss_heads": "seen"}}),
    "derpp-seen": ("derpp", {"method_args": {"loss_heads": "seen"}}),
    "spg-fi": ("spg", {"method_args": {"importance": "fisher"}}),
    "ewc-seen": ("ewc", {"method_args": {"loss_heads": "seen"}}),
}
#: methods also run killed after the first checkpoint of task 2 (mid-task where they checkpoint
#: inside a task), then resumed
RESUMED = ("er", "der", "hat", "spg", "wsn", "packnet", "dynamos-base", "si", "ewc", "eidetic")


def runs() -> list[tuple[str, dict]]:
    """(folder name, config dict) of every run of the set."""
    from retain.methods import REGISTRY

    items = [(m, m, SPECIAL.get(m, {})) for m in sorted(REGISTRY)]
    items += [(name, m, o) for name, (m, o) in VARIANTS.items()]
    out = []
    for bench, bargs in BENCHMARKS.items():
        for name, method, over in items:
            cfg = {**COMMON, **over, "method": method, "benchmark": bench, "benchmark_args": bargs}
            if "model" not in over:
                cfg["model_args"] = {**COMMON["model_args"], **over.get("model_args", {})}
            out.append((f"{bench}/{name}", cfg))
            if name in RESUMED:
                out.append((f"{bench}/{name}-resumed", {**cfg, "checkpoint_every": 1}))
    return out


class _Killed(Exception):
    pass


def _kill_mid_task(run_dir: Path) -> None:
    """Make the first checkpoint of task 2 (index 1) end the run, as a kill would: mid-task
    where the method checkpoints inside a task, else at the task's end (Eidetic)."""
    from retain.engine import runio

    save = runio.save_torch

    def save_then_die(path, state):
        save(path, state)
        if state["task"] == 1:
            runio.save_torch = save
            raise _Killed

    runio.save_torch = save_then_die


def _one(job: tuple[str, dict, str]) -> tuple[str, str]:
    name, cfg, out = job
    from retain.engine import Diverged
    from retain.experiment import apply, resolve
    from retain.trials import execute

    merged: dict = {}
    apply(merged, cfg, "snapshot")
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(merged, f)
    config = resolve(f.name)
    run_dir = Path(out) / name
    try:
        if name.endswith("-resumed"):
            _kill_mid_task(run_dir)
            try:
                execute(config, run_dir, resume=False, progress=False)
                return name, "error: the run was not interrupted"
            except _Killed:
                pass
            execute(config, run_dir, resume=True, progress=False)
        else:
            execute(config, run_dir, resume=False, progress=False)
    except Diverged as e:  # an outcome to compare like metrics (EWC class-incremental does)
        return name, f"diverged at task {e.task}, epoch {e.epoch}, step {e.step}"
    except Exception as e:  # recorded, the set goes on
        return name, f"error: {type(e).__name__}: {e}"
    return name, "ok"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the run folders")
    p.add_argument(
        "--check",
        help="a recording made before (an --out folder, or a --save file): compare every "
        "metrics.json byte for byte",
    )
    p.add_argument("--save", help="also write every run's metrics.json into one JSON file")
    p.add_argument("--only", default="", help="comma-separated run names (e.g. er,hat) to run")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    only = {s for s in args.only.split(",") if s}
    jobs = [(n, c, args.out) for n, c in runs() if not only or n.split("/")[1] in only]
    ctx = mp.get_context("fork")
    with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
        results = dict(pool.imap_unordered(_one, jobs))
    recorded = _recording(args.check) if args.check else {}
    bad = 0
    for name, _, _ in jobs:
        status = results[name]
        line = f"{name}: {status}"
        if args.check and status.startswith("diverged"):
            same = recorded.get(name) == status
            line += ", identical" if same else f", DIFFERENT (recorded: {recorded.get(name)})"
            bad += not same
            print(line)
            continue
        if args.check and status == "ok":
            b = Path(args.out) / name / "metrics.json"
            if name not in recorded:
                line += " (nothing recorded before)"
            elif recorded[name] == b.read_text():
                line += ", identical"
            else:
                line += ", DIFFERENT"
                bad += 1
        if name.endswith("-resumed") and status == "ok":
            plain = Path(args.out) / name.removesuffix("-resumed") / "metrics.json"
            same = (
                plain.is_file()
                and plain.read_bytes() == (Path(args.out) / name / "metrics.json").read_bytes()
            )
            line += (
                "; equals the uninterrupted run" if same else "; DIFFERS from the uninterrupted run"
            )
            bad += not same
        bad += status != "ok"
        print(line)
    print(f"{len(jobs)} runs, {bad} failed or different")
    if args.save:
        texts = {
            name: (Path(args.out) / name / "metrics.json").read_text()
            for name, _, _ in jobs
            if results[name] == "ok"
        }
        texts.update({n: r for n, r in results.items() if r.startswith("diverged")})
        Path(args.save).write_text(json.dumps(texts, indent=0, sort_keys=True) + "\n")
    return 1 if bad else 0


def _recording(path: str) -> dict[str, str]:
    """``{run name: metrics.json text}`` of a recording: an ``--out`` folder or a ``--save``
    file."""
    where = Path(path)
    if where.is_file():
        return json.loads(where.read_text())
    return {str(f.parent.relative_to(where)): f.read_text() for f in where.glob("*/*/metrics.json")}


if __name__ == "__main__":
    sys.exit(main())
