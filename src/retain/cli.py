"""The ``retain`` command: ``run``, ``list``, ``report``, ``compare``, ``sweep``.

Every user error (names, config keys and values, files, data) ends in one line on stderr and
exit code 2; nothing already in a run folder is overwritten or lost.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

EXIT_USAGE = 2


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="retain", description="Continual learning: train one network on a task sequence."
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a method on a benchmark and write a run folder")
    run.add_argument("--method", help="method name (see `retain list`)")
    run.add_argument("--benchmark", help="benchmark name (see `retain list`)")
    run.add_argument("--model", help="backbone name (default: mlp)")
    run.add_argument("--seed", type=int, help="run seed (default 0)")
    run.add_argument("--epochs", type=int, help="epochs per task (default 1)")
    run.add_argument("--threads", type=int, help="torch threads (default 1: steady and portable)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. lr=0.1, method_args.lamb=5000, benchmark_args.n_tasks=10",
    )
    run.add_argument("--config", help="YAML file of config keys")
    run.add_argument("--out", help="run folder to create (default runs/<benchmark>-<method>-...)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("list", help="show the available methods, benchmarks and models")

    rep = sub.add_parser(
        "report",
        help="tables (mean ± std over seeds) and plots of run folders: report.md, report.html",
    )
    rep.add_argument("runs", nargs="+", help="run folders, or folders holding run folders")
    rep.add_argument("--out", default="report", help="folder for the report (default: report)")
    rep.add_argument("--note", default="", help="a line of text shown above the tables")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        if args.command == "report":
            return _report(args.runs, Path(args.out), args.note)
        return _run(args)
    except UserError as e:
        print(f"retain: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `retain list | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("retain: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130


def _list() -> int:
    from retain.data import describe_benchmarks
    from retain.methods import describe_methods
    from retain.models import describe_models

    for title, rows in (
        ("methods", describe_methods()),
        ("benchmarks", describe_benchmarks()),
        ("models", describe_models()),
    ):
        print(f"{title}:")
        width = max(len(name) for name, _ in rows)
        for name, doc in rows:
            print(f"  {name:<{width}}  {doc}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from retain.experiment import ConfigError, resolve

    flags = {
        "method": args.method,
        "benchmark": args.benchmark,
        "model": args.model,
        "seed": args.seed,
        "epochs": args.epochs,
        "threads": args.threads,
    }
    try:
        if args.resume:
            config, run_dir = _resume_config(Path(args.resume), args, flags)
        else:
            config = resolve(args.config, flags, args.set)
            run_dir = Path(args.out) if args.out else _default_run_dir(config)
            _check_new_run_dir(run_dir)
    except ConfigError as e:
        raise UserError(str(e)) from None
    return _execute(config, run_dir, resume=bool(args.resume), quiet=args.quiet)


def _default_run_dir(config) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.benchmark}-{config.method}-seed{config.seed}-{stamp}"


def _check_new_run_dir(run_dir: Path) -> None:
    from retain.engine import runio

    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {str(run_dir)!r} exists and is not a folder")
    if run_dir.is_dir() and any(
        (run_dir / f).exists() for f in (runio.CONFIG, runio.METRICS, runio.CHECKPOINT)
    ):
        raise UserError(
            f"{str(run_dir)!r} already holds a run; use --resume {run_dir} or another --out"
        )


def _resume_config(run_dir: Path, args: argparse.Namespace, flags: dict):
    from retain.engine import runio
    from retain.experiment import ConfigError, resolve

    if not run_dir.is_dir():
        raise UserError(f"cannot resume: {str(run_dir)!r} is not a folder")
    cfg_file = run_dir / runio.CONFIG
    if not cfg_file.is_file():
        raise UserError(f"cannot resume: {str(run_dir)!r} holds no {runio.CONFIG}")
    if not (run_dir / runio.CHECKPOINT).is_file():
        raise UserError(f"cannot resume: {str(run_dir)!r} holds no checkpoint yet; start it again")
    try:
        stored = resolve(cfg_file)
    except ConfigError as e:
        raise UserError(f"cannot resume: {cfg_file}: {e}") from None
    if args.config or args.set or any(v is not None for v in flags.values()):
        # options given with --resume must describe the same run
        asked = resolve(args.config, {**_nonnull(stored.to_dict()), **_nonnull(flags)}, args.set)
        diff = [k for k, v in asked.to_dict().items() if stored.to_dict()[k] != v]
        if diff:
            k = diff[0]
            raise UserError(
                f"{str(run_dir)!r} holds a config for another run ({k}: "
                f"{stored.to_dict()[k]!r} there, {asked.to_dict()[k]!r} asked)"
            )
    return stored, run_dir


def _nonnull(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _execute(config, run_dir: Path, resume: bool, quiet: bool) -> int:
    import torch

    from retain.data import DataError
    from retain.engine import fit, runio
    from retain.experiment import ConfigError, build

    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        benchmark, model, method = build(config)
    except (ConfigError, DataError) as e:
        raise UserError(str(e)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        runio.write_yaml(run_dir / runio.CONFIG, config.to_dict())
        runio.write_json(
            run_dir / runio.ENVIRONMENT, runio.environment(config.seed, config.threads)
        )
    n_done = _tasks_done(run_dir) if resume else 0
    if resume and n_done == benchmark.n_tasks:
        print(f"{run_dir}: all {n_done} tasks already done", file=sys.stderr)
    else:
        print(
            f"retain: {config.method} on {config.benchmark} ({benchmark.n_tasks} tasks, "
            f"model {config.model}, seed {config.seed}) -> {run_dir}",
            file=sys.stderr,
        )
    result = fit(
        model,
        benchmark,
        method,
        config.train_config(),
        seed=config.seed,
        run_dir=run_dir,
        resume=resume,
        progress=False if quiet else None,
    )
    from retain.report import format_result
    from retain.report.dynamos_analysis import write_dynamos_analysis

    metrics = result.metrics()
    write_dynamos_analysis(run_dir, metrics.get("method", {}))
    print(format_result(metrics))
    return 0


def _tasks_done(run_dir: Path) -> int:
    import json

    from retain.engine import runio

    path = run_dir / runio.METRICS
    if not path.is_file():
        return 0
    return len(json.loads(path.read_text())["task_aware"]["rows"])


def _warn(message: str) -> None:
    print(f"retain: warning: {message}", file=sys.stderr)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a folder")


def _report(paths: list[str], out: Path, note: str) -> int:
    from retain.report import collect, make_report, markdown_table, write_report

    for p in paths:
        if not Path(p).is_dir():
            raise UserError(f"{p!r} is not a folder")
    _check_out_dir(out)
    collection = collect([Path(p) for p in paths])
    for skipped in collection.skipped:
        _warn(skipped.message())
    if not collection.runs:
        raise UserError(
            f"no finished run folders in {', '.join(paths)}"
            + (
                f" ({len(collection.skipped)} skipped, see the warnings)"
                if collection.skipped
                else ""
            )
        )
    report = make_report(collection, note=note)
    if note:
        print(note, end="\n\n")
    for section in report.sections:
        print(f"{section.table.title}\n\n{markdown_table(section.table)}\n")
    written = write_report(report, out)
    print(f"retain: wrote {' and '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
