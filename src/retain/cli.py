"""The ``retain`` command: ``run``, ``list``, ``report``, ``compare``, ``sweep``.

Every user error (names, config keys and values, files, data) ends in one line on stderr and
exit code 2; nothing already in a run folder is overwritten or lost. A run whose training
diverged (a non-finite loss or weights) ends in one line naming the task, epoch and step, exit
code 3, and its folder marked with ``diverged.json``. Ctrl-C and SIGTERM stop a command with
exit code 130 and 143; ``retain run`` then says in one line what its checkpoint holds, what is
lost, and the ``retain run --resume DIR`` that continues it. One process writes a run folder
(its lock, beside it); a second is refused in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_DIVERGED = 3
#: exit codes of an interrupted command (the shell's 128 + signal number)
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
#: ``compare --protocol`` choices, :data:`retain.report.protocol.PROTOCOLS` (not imported here:
#: the parser stays free of the report's imports)
PROTOCOLS = ("seen", "task", "own")


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises ``KeyboardInterrupt``: the same
    clean stop (atomic writes finish or leave the previous file), exit code 143."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _catch_sigterm():
    """Turn SIGTERM into :class:`Terminated` while ``main`` runs; returns the undo."""
    import signal

    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, AttributeError):  # not the main thread, or no SIGTERM here
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


def _ignore_signals() -> None:
    """Ignore SIGINT and SIGTERM from here on: the command has done its work and returns its
    exit code; a signal while the interpreter shuts down (torch's finalizers take a moment)
    would otherwise turn a finished command into a killed one, or a traceback."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, AttributeError, OSError):
            signal.signal(sig, signal.SIG_IGN)


def _interrupt_code(e: BaseException) -> int:
    return EXIT_SIGTERM if isinstance(e, Terminated) else EXIT_SIGINT


def _signal_name(e: BaseException) -> str:
    return "SIGTERM" if isinstance(e, Terminated) else "SIGINT"


class _HelpWithConfigKeys(argparse.Action):
    """``retain run --help``: the usual help, then every config key with its default and
    meaning, generated from ``RunConfig`` and ``TrainConfig`` (imported, with torch, only
    when this help is asked for, so that other commands stay fast)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from retain.describe import config_keys

        parser.epilog = config_keys()
        parser.print_help()
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="retain",
        description="Continual learning: train one network on a task sequence.",
        epilog="exit codes: 0 done; 1 a compare or sweep trial failed; 2 a user error (one "
        "line); 3 training diverged (a non-finite loss or weights; the run folder holds "
        "diverged.json); 130 and 143 interrupted (Ctrl-C, SIGTERM)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="train a method on a benchmark and write a run folder",
        add_help=False,  # -h/--help below: also the config keys, read when asked
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "-h",
        "--help",
        action=_HelpWithConfigKeys,
        help="show this help and every config key (default, meaning), then exit",
    )
    run.add_argument("--method", help="method name (see `retain list`)")
    run.add_argument("--benchmark", help="benchmark name (see `retain list`)")
    run.add_argument("--model", help="backbone name (default: mlp)")
    run.add_argument("--seed", type=int, help="run seed (default 0)")
    run.add_argument("--epochs", type=int, help="epochs per task (default 1)")
    run.add_argument("--lr", type=float, help="learning rate (default 0.01)")
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
    _add_compute_flags(run)

    lst = sub.add_parser(
        "list",
        help="show the available methods, benchmarks and models, or one of them in full",
        description="Without NAME: every method, benchmark and model, with a line each. With "
        "NAME: that method's, benchmark's or model's arguments (their defaults and meanings) "
        "and, for a method, whether it predicts without a task id and its docs page.",
    )
    lst.add_argument("name", nargs="?", metavar="NAME", help="a method, benchmark or model")

    rep = sub.add_parser(
        "report",
        help="tables (mean ± std over seeds) and plots of run folders: report.md, report.html",
    )
    rep.add_argument("runs", nargs="+", help="run folders, or folders holding run folders")
    rep.add_argument("--out", default="report", help="folder for the report (default: report)")
    rep.add_argument("--note", default="", help="a line of text shown above the tables")

    cmp = sub.add_parser(
        "compare",
        help="train methods x seeds on one benchmark, print the table, write the report",
        description="Train every method with every seed on one benchmark (each trial an "
        "ordinary run folder under --out; run again to skip finished trials and resume "
        "interrupted ones), print the table of mean ± std over seeds and write OUT/report/.",
    )
    cmp.add_argument("--benchmark", required=True, help="benchmark name (see `retain list`)")
    cmp.add_argument("--methods", required=True, help="comma-separated method names")
    cmp.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a list 0,4,7")
    cmp.add_argument("--model", help="backbone name (default: mlp)")
    cmp.add_argument("--epochs", type=int, help="epochs per task (default 1)")
    cmp.add_argument("--lr", type=float, help="learning rate (default 0.01)")
    cmp.add_argument("--threads", type=int, help="torch threads per trial (default 1)")
    cmp.add_argument("--config", help="YAML file of config keys for every trial")
    cmp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[METHOD:]KEY=VALUE",
        help="a config key for every trial, or with METHOD: for that method's trials only "
        "(ewc:method_args.lamb=5000)",
    )
    cmp.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="seen",
        help="what the training loss of every method sees, set as its method_args.loss_heads: "
        "seen (default: every class seen so far, so that the task-agnostic columns compare), "
        "task (the current task's outputs only), own (each method's default). Methods that "
        "fix theirs (iCaRL, BiC, LUCIR: seen; WSN, PackNet, HAT, SupSup, SPG, Eidetic, One: "
        "task) keep it, and --set [METHOD:]method_args.loss_heads=... wins; the table's heads "
        "column says what each row used",
    )
    cmp.add_argument("--out", help="folder of the trials (default runs/compare-<benchmark>)")
    cmp.add_argument("--note", default="", help="a line of text shown above the table")
    _add_workers(cmp, default=1)

    swp = sub.add_parser(
        "sweep",
        help="run a sweep file (methods x benchmarks x seeds x hyperparameters), on Ray",
        description="Run every trial of a sweep file (see `retain.sweep`), each an ordinary "
        "run folder; run again to skip finished trials and resume interrupted ones. Trials run "
        "on an embedded local Ray (pip install 'retain-cl[sweep]'), on a Ray cluster with "
        "--address, or one after another here with --workers 1.",
    )
    swp.add_argument("file", metavar="SWEEP.yaml", help="the sweep file")
    swp.add_argument("--out", help="folder of the trials (default: the file's out, or runs/<name>)")
    swp.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a key for every trial"
    )
    swp.add_argument("--note", default="", help="a line of text shown above the table")
    _add_workers(swp, default=None)
    return p


def _add_compute_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", help="cpu (default), cuda, cuda:N, mps or auto (cuda when available)"
    )
    p.add_argument("--amp", help="mixed precision: off (default), bf16, fp16 (CUDA)")
    p.add_argument(
        "--smoke",
        action="store_true",
        default=None,
        help="shrink the run to seconds (1 epoch, 4 samples per class, first 3 tasks) to check "
        "that a config runs end to end",
    )


def _add_workers(p: argparse.ArgumentParser, default: int | None) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=default,
        help="trials at a time: 1 runs them one after another in this process; more run on an "
        "embedded local Ray" + (" (default: one per CPU)" if default is None else ""),
    )
    p.add_argument("--address", help="run the trials on the Ray cluster at this address")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":  # before torch loads: the listing reads the source files
        return _list(args.name)
    restore = _catch_sigterm()
    try:  # torch loads here (seconds): an interrupt now is a line too, not a traceback
        from retain.engine.runio import RunFileError
        from retain.engine.trainer import DIVERGED, Diverged
    except KeyboardInterrupt as e:
        sig = _signal_name(e)
        print(f"retain: interrupted ({sig}); run the same command again", file=sys.stderr)
        if argv is None:
            _ignore_signals()
        else:
            restore()
        return _interrupt_code(e)
    try:
        torchrun = _launched_by_torchrun()
        if args.command == "list":
            return _list()
        if args.command == "report":
            return _report(args.runs, Path(args.out), args.note)
        if args.command in ("compare", "sweep") and torchrun:
            raise UserError(
                f"retain {args.command} runs many trials; start single runs with torchrun "
                "(torchrun ... -m retain.cli run --out DIR)"
            )
        if args.command == "compare":
            return _compare(args)
        if args.command == "sweep":
            return _sweep(args)
        return _run(args)
    except (UserError, RunFileError) as e:  # RunFileError: a disk full, a garbled file
        print(f"retain: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Diverged as e:
        where = f"; {e.run_dir} is marked diverged ({DIVERGED})" if e.run_dir else ""
        print(f"retain: {e}{where}", file=sys.stderr)
        return EXIT_DIVERGED
    except BrokenPipeError:  # e.g. `retain list | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as e:  # `retain run` in a folder says more (_run)
        again = (
            "run the same command again: finished trials are skipped, interrupted ones resume "
            "from their last checkpoint"
            if args.command in ("compare", "sweep")
            else "run the same command again"
        )
        print(f"retain: interrupted ({_signal_name(e)}); {again}", file=sys.stderr)
        return _interrupt_code(e)
    finally:
        if argv is None:  # the command line: a signal while Python exits changes nothing now
            _ignore_signals()
        else:
            restore()


def _launched_by_torchrun() -> bool:
    """Whether ``torchrun`` started several processes (``WORLD_SIZE``), checked once."""
    from retain.engine import distributed

    try:
        return distributed.requested_world_size() > 1
    except ValueError as e:
        raise UserError(str(e)) from None


def _list(name: str | None = None) -> int:
    """``retain list``: every method, benchmark and model with a line each, read from the
    source files (no torch, a fraction of a second); ``retain list NAME``: that one in full
    (imports its registry). An unknown NAME is one line with the closest names, exit 2."""
    from retain import describe

    try:
        if name is None:
            print(describe.format_listing(describe.listing()))
        else:
            print(describe.details(name))
    except describe.UnknownName as e:
        print(f"retain: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `retain list | head`
        sys.stderr.close()
    except KeyboardInterrupt as e:
        print(f"retain: interrupted ({_signal_name(e)})", file=sys.stderr)
        return _interrupt_code(e)
    return 0


def _run(args: argparse.Namespace) -> int:
    from retain.experiment import ConfigError, resolve

    flags = {
        "method": args.method,
        "benchmark": args.benchmark,
        "model": args.model,
        "seed": args.seed,
        "epochs": args.epochs,
        "lr": args.lr,
        "threads": args.threads,
        "device": args.device,
        "amp": args.amp,
        "smoke": args.smoke,
    }
    from retain.engine import distributed, runio

    rank = distributed.launched_rank()  # under torchrun: process 0 checks and writes the folder
    with contextlib.ExitStack() as held:  # the folder's lock, held until the run ends
        fresh = False
        try:
            if args.resume:
                if rank == 0 and Path(args.resume).is_dir():
                    _claim(held, Path(args.resume))
                config, run_dir = _resume_config(Path(args.resume), args, flags)
                fresh = not (run_dir / runio.CHECKPOINT).is_file()
            else:
                config = resolve(args.config, flags, args.set, required=("method", "benchmark"))
                if not args.out and _launched_by_torchrun():
                    raise UserError("a data-parallel run (torchrun) needs --out or --resume")
                run_dir = Path(args.out) if args.out else _default_run_dir(config)
                if rank == 0:
                    _check_parents(run_dir)
                    _claim(held, run_dir)
                    _check_new_run_dir(run_dir)
        except ConfigError as e:
            raise UserError(str(e)) from None
        if fresh and rank == 0:
            print(
                f"retain: {run_dir} was stopped before its first checkpoint; starting it again "
                f"from the beginning with its {runio.CONFIG}",
                file=sys.stderr,
            )
        try:
            return _execute(
                config, run_dir, resume=bool(args.resume) and not fresh, quiet=args.quiet
            )
        except KeyboardInterrupt as e:
            if rank == 0:
                print(_interrupt_message(e, run_dir, config), file=sys.stderr)
            return _interrupt_code(e)


def _claim(held: contextlib.ExitStack, run_dir: Path) -> None:
    """Take ``run_dir``'s lock (the one compare and sweep take for a trial, and
    :func:`retain.fit` for its ``run_dir``, beside the folder) for the rest of the run, before
    anything is written; refuse if another process holds it."""
    from retain.engine import runio

    try:
        runio.claim_run_dir(held, run_dir, option="--out")
    except runio.RunFolderError as e:
        raise UserError(str(e)) from None


def _interrupt_message(e: BaseException, run_dir: Path, config) -> str:
    """One line: what the interrupted run's folder holds, what is lost, the resume command."""
    import shlex

    from retain.engine import runio

    head = f"retain: interrupted ({_signal_name(e)})"
    if not (run_dir / runio.CONFIG).is_file():
        return f"{head} before anything was written to {run_dir}; run the same command again"
    progress = getattr(e, "run_progress", None)
    n = f"/{progress.n_tasks}" if progress is not None and progress.n_tasks else ""
    task = None if progress is None else progress.task
    where = "before training started" if task is None else f"in task {task + 1}{n}"
    ck = None if progress is None else progress.checkpoint
    every = getattr(config, "checkpoint_every", 0)
    hint = "" if every else " (--set checkpoint_every=N also checkpoints every N epochs)"
    start = "it will start again from the beginning"
    if progress is None:  # stopped before training began (building, loading the data)
        held = (
            f"{run_dir / runio.CHECKPOINT} is unchanged"
            if (run_dir / runio.CHECKPOINT).is_file()
            else f"{run_dir} holds no checkpoint yet: {start}"
        )
    elif ck is None:
        lost = "" if task is None else f"all its training so far is lost{hint} and "
        held = f"{run_dir} holds no checkpoint yet: {lost}{start}"
    else:
        done = ck["task"] + 1 if ck["task_done"] else ck["task"]
        saved = f"{done} task{'s' if done != 1 else ''} done"
        if not ck["task_done"]:
            e = ck.get("epoch", 0)
            saved += f" and {e} epoch{'s' if e != 1 else ''} of task {ck['task'] + 1}"
        if task is None or (ck["task_done"] and ck["task"] >= task):
            lost = "nothing is lost"
        else:
            lost = f"the training of task {task + 1} since then is lost{hint}"
        held = f"{run_dir / runio.CHECKPOINT} holds {saved}: {lost}"
    resume = f"retain run --resume {shlex.quote(str(run_dir))}"
    return f"{head} {where}; {held}; continue with: {resume}"


def _default_run_dir(config) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.benchmark}-{config.method}-seed{config.seed}-{stamp}"


def _check_new_run_dir(run_dir: Path) -> None:
    """--out must be a folder that can be written and holds no run yet (the check
    :func:`retain.fit` makes of its ``run_dir``)."""
    from retain.engine import runio

    try:
        runio.check_new_run_dir(run_dir, "--out", f"--resume {run_dir}")
    except runio.RunFolderError as e:
        raise UserError(str(e)) from None


def _resume_config(run_dir: Path, args: argparse.Namespace, flags: dict):
    from retain.engine import runio
    from retain.experiment import ConfigError, resolve

    if not run_dir.is_dir():
        raise UserError(f"cannot resume: {str(run_dir)!r} is not a folder")
    cfg_file = run_dir / runio.CONFIG
    if not cfg_file.is_file():
        raise UserError(f"cannot resume: {str(run_dir)!r} holds no {runio.CONFIG}")
    _check_rebuildable(run_dir)
    if not (run_dir / runio.CHECKPOINT).is_file():  # stopped before its first checkpoint
        return _restart_config(run_dir, args, flags)
    try:
        stored = resolve(cfg_file, empty_file=True)  # emptied: the checkpoint's config differs
        # verified in full (format, checksum, weights only) before anything is built or said
        trained = runio.load_torch(run_dir / runio.CHECKPOINT).get("config")
    except ConfigError as e:
        raise UserError(f"cannot resume: {cfg_file}: {e}") from None
    except runio.CheckpointError as e:
        raise UserError(f"cannot resume: {e}") from None
    differs = runio.config_difference(trained, stored.to_dict(), "in config.yaml")
    if differs:  # config.yaml edited, emptied or replaced since the run was started
        raise UserError(
            f"cannot resume: {cfg_file} is not the config {runio.CHECKPOINT} was trained with "
            f"({differs}); restore it or start a new run"
        )
    _check_asked(stored, run_dir, args, flags)
    return stored, run_dir


def _check_rebuildable(run_dir: Path) -> None:
    """A folder :func:`retain.fit` wrote for a model, benchmark or method of one's own
    (``own_objects`` in its config.yaml) cannot be rebuilt by name: resume it from Python."""
    import yaml

    from retain import config_yaml
    from retain.engine import runio

    try:
        stored = config_yaml.load((run_dir / runio.CONFIG).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # resolve() says what is wrong with the file
    own = stored.get(runio.OWN_OBJECTS) if isinstance(stored, dict) else None
    if not own:
        return
    what = ", ".join(f"{k} {v}" for k, v in own.items()) if isinstance(own, dict) else own
    raise UserError(
        f"cannot resume: {str(run_dir)!r} was written by retain.fit with Python objects of "
        f"its own ({what}) that retain run cannot build; resume it from Python with "
        f"retain.fit(..., run_dir={str(run_dir)!r}, resume=True)"
    )


def _check_asked(stored, run_dir: Path, args: argparse.Namespace, flags: dict) -> None:
    """Options given with --resume must describe the run in ``run_dir``."""
    from retain.experiment import resolve

    if args.config or args.set or any(v is not None for v in flags.values()):
        asked = resolve(args.config, {**_nonnull(stored.to_dict()), **_nonnull(flags)}, args.set)
        diff = [k for k, v in asked.to_dict().items() if stored.to_dict()[k] != v]
        if diff:
            k = diff[0]
            raise UserError(
                f"{str(run_dir)!r} holds a config for another run ({k}: "
                f"{stored.to_dict()[k]!r} there, {asked.to_dict()[k]!r} asked)"
            )


def _restart_config(run_dir: Path, args: argparse.Namespace, flags: dict):
    """The config of a folder stopped before its first checkpoint (killed, or the checkpoint
    could not be written): its config.yaml, to train again from the beginning."""
    from retain.engine import runio
    from retain.experiment import ConfigError, resolve

    if (run_dir / runio.METRICS).is_file():  # results without the checkpoint they came from
        raise UserError(
            f"cannot resume: {str(run_dir)!r} holds {runio.METRICS} but no {runio.CHECKPOINT}; "
            "move the folder away or start a new run"
        )
    cfg_file = run_dir / runio.CONFIG
    try:
        stored = resolve(cfg_file)
    except ConfigError as e:
        raise UserError(f"cannot resume: {cfg_file}: {e}") from None
    _check_asked(stored, run_dir, args, flags)
    return stored, run_dir


def _nonnull(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _execute(config, run_dir: Path, resume: bool, quiet: bool) -> int:
    import torch

    from retain.engine import distributed, runio
    from retain.experiment import ConfigError
    from retain.report import format_result
    from retain.trials import execute

    main = distributed.launched_rank() == 0

    def announce(benchmark) -> None:
        if not main:
            return
        n_done = _tasks_done(run_dir) if resume else 0
        if resume and n_done == benchmark.n_tasks:
            print(f"{run_dir}: all {n_done} tasks already done", file=sys.stderr)
        else:
            print(
                f"retain: {config.method} on {config.benchmark} ({benchmark.n_tasks} tasks, "
                f"model {config.model}, seed {config.seed}) -> {run_dir}",
                file=sys.stderr,
            )

    try:
        result = execute(
            config, run_dir, resume=resume, progress=False if quiet else None, on_built=announce
        )
    except (ConfigError, runio.CheckpointError) as e:
        raise UserError(str(e)) from None
    if main:
        print(format_result(result.metrics()))
    if distributed.active():
        torch.distributed.destroy_process_group()
    return 0


def _tasks_done(run_dir: Path) -> int:
    """Tasks done by metrics.json; 0 if it is missing or unreadable (the resume rebuilds it
    from the checkpoint, as a compare's trial does)."""
    from retain.trials import tasks_done

    done = tasks_done(run_dir)
    return 0 if done is None else done[0]


def _warn(message: str) -> None:
    print(f"retain: warning: {message}", file=sys.stderr)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a folder")
    _check_parents(out)
    _check_writable(out)


def _check_parents(out: Path) -> None:
    """An --out below a file (``notes.txt/run``) cannot be made: say which file, before the
    folder's lock or a probe tries (their errors would say "File exists")."""
    for parent in Path(out).parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(
                    f"--out {str(out)!r} cannot be made: {str(parent)!r} is a file, not a folder"
                )
            return


def _check_writable(folder: Path) -> None:
    """--out must be a folder files can be created in (tried, then undone), before training."""
    from retain.engine import runio

    try:
        runio.check_writable(folder)
    except runio.RunFileError as e:
        raise UserError(f"--out: {e}") from None


def _report(paths: list[str], out: Path, note: str) -> int:
    from retain.report import collect, make_report, markdown_table, write_report
    from retain.report.layout import heads_line

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
        print(f"{heads_line(section.table)}\n")
    written = write_report(report, out)
    print(f"retain: wrote {' and '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def _check_workers(workers: int | None, address: str | None) -> None:
    from retain.executors import RAY_HINT, ray_available

    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if (workers != 1 or address) and not ray_available():
        raise UserError(RAY_HINT)


def _split_scoped(pairs: list[str], methods: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--set`` pairs for every trial, and ``METHOD:KEY=VALUE`` pairs by method."""
    common: list[str] = []
    scoped: dict[str, list[str]] = {m: [] for m in methods}
    for pair in pairs:
        key = pair.split("=", 1)[0]
        if ":" in key:
            method, rest = pair.split(":", 1)
            if method not in scoped:
                raise UserError(
                    f"--set {pair!r}: {method!r} is not one of --methods ({', '.join(methods)})"
                )
            scoped[method].append(rest)
        else:
            common.append(pair)
    return common, scoped


def _compare(args: argparse.Namespace) -> int:
    from retain.experiment import ConfigError, parse_set, resolve
    from retain.sweep import SweepError, parse_seeds
    from retain.trials import Trial

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods names no method")
    if len(set(methods)) != len(methods):
        raise UserError(f"--methods lists a method twice: {args.methods}")
    _check_workers(args.workers, args.address)
    common, scoped = _split_scoped(args.set, methods)
    flags = {
        "benchmark": args.benchmark,
        "model": args.model,
        "epochs": args.epochs,
        "lr": args.lr,
        "threads": args.threads,
    }
    try:
        seeds = parse_seeds(args.seeds, "--seeds")
        common_keys = parse_set(common)
        configs = [
            _under_protocol(
                lambda extra, method=method, seed=seed: resolve(
                    args.config,
                    flags,
                    common_keys,
                    axes=[("option", {"method": method, "seed": seed})],
                    overrides=[(f"--set {method}:", parse_set(scoped[method])), *extra],
                ),
                args.protocol,
            )
            for method in methods
            for seed in seeds
        ]
    except (ConfigError, SweepError) as e:
        raise UserError(str(e)) from None
    _announce_protocol(configs, args.protocol)
    out = Path(args.out) if args.out else Path("runs") / f"compare-{args.benchmark}"
    _check_out_dir(out)
    trials = [Trial.under(out, c) for c in configs]
    if len({t.name for t in trials}) != len(trials):
        raise UserError(
            "--set method=... or seed=... makes trials identical; use --methods, --seeds"
        )
    return _run_trials(trials, out, args, title="retain compare")


def _under_protocol(make, protocol: str):
    """The trial config ``make([])``, or, under ``compare --protocol seen|task``, ``make`` with
    one more layer that sets the method's ``loss_heads`` (``method_args.loss_heads``, or
    ``method_args.base_args.loss_heads`` for ScrollNet) to ``protocol``: unless the method
    fixes its own, or a ``--set``/``--config`` already chose it."""
    from retain.report.protocol import OWN, lookup, protocol_key

    config = make([])
    if protocol == OWN:
        return config
    key = protocol_key(config.method, config.method_args)
    if key is None or lookup({"method_args": config.method_args}, key)[0]:
        return config
    return make([("--protocol", {key: protocol})])


def _announce_protocol(configs, protocol: str) -> None:
    """One line on stderr naming the methods that do not train under ``protocol``."""
    from retain.report.protocol import OWN, method_protocol

    if protocol == OWN:
        return
    differ: dict[str, str] = {}
    for c in configs:
        heads = method_protocol(c.method, c.method_args)
        if heads != protocol:
            differ.setdefault(c.method, str(heads))
    if differ:
        rows = ", ".join(f"{m} ({h})" for m, h in differ.items())
        print(
            f"retain: --protocol {protocol}; trained on other heads (fixed by the method, or "
            f"chosen by --set): {rows}",
            file=sys.stderr,
            flush=True,
        )


def _sweep(args: argparse.Namespace) -> int:
    from retain.experiment import ConfigError, parse_set
    from retain.sweep import SweepError, check_search, expand, load_spec
    from retain.trials import Trial

    try:
        spec = load_spec(args.file)
        base = parse_set(args.set)
        if spec.search is None:
            configs = expand(spec, base)
        else:
            check_search(spec, base)
    except (ConfigError, SweepError) as e:
        raise UserError(str(e)) from None
    _check_workers(args.workers, args.address)
    out = Path(args.out or spec.out or Path("runs") / Path(args.file).stem)
    _check_out_dir(out)
    if spec.search is not None:
        return _search(spec, base, out, args)
    return _run_trials([Trial.under(out, c) for c in configs], out, args, title="retain sweep")


def _search(spec, base: dict, out: Path, args: argparse.Namespace) -> int:
    """A sweep with a ``search`` section: run its studies, print the best point of each, then
    the table and report of every point tried."""
    import os

    from retain.executors import ExecutorError, make_executor
    from retain.sweep import SearchError, run_search

    print(
        f"retain: search in {out} ({spec.search.sampler}, {spec.search.trials} points per "
        f"benchmark x method, {len(spec.seeds)} seeds each)",
        file=sys.stderr,
        flush=True,
    )
    batch = args.workers or (1 if args.address else os.cpu_count() or 1)
    try:
        with make_executor(args.workers, args.address) as executor:
            outcome = run_search(spec, out, executor, batch=max(1, batch), base=base)
    except (ExecutorError, SearchError) as e:
        raise UserError(str(e)) from None
    code = _summarize(
        outcome.trials, out, args, "retain sweep (search)", outcome.failed, retry=False
    )
    metric = spec.search.metric
    for s in outcome.studies:
        best = (
            "no finished point"
            if s.best_value is None
            else (
                f"best {metric} {100 * s.best_value:.2f} (mean over seeds) at "
                + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in s.best_params.items()
                )
            )
        )
        print(f"{s.name}: {best}; {s.finished} points done, {s.failed} failed")
    return code


def _run_trials(trials, out: Path, args: argparse.Namespace, title: str) -> int:
    """Run the trials, then print the table of those that finished and write OUT/report/;
    exit 1 when a trial failed."""
    from retain.executors import ExecutorError, make_executor
    from retain.sweep import run_trials
    from retain.trials import TrialConflict, trial_state

    for trial in trials:  # a folder holding another run stops everything before it starts
        try:
            trial_state(trial)
        except TrialConflict as e:
            raise UserError(str(e)) from None
    print(
        f"retain: {len(trials)} trials in {out}" + (f" ({args.note})" if args.note else ""),
        file=sys.stderr,
        flush=True,
    )
    try:
        with make_executor(args.workers, args.address) as executor:
            outcome = run_trials(trials, out, executor)
    except ExecutorError as e:
        raise UserError(str(e)) from None
    return _summarize(trials, out, args, title, outcome.failed)


def _summarize(
    trials, out: Path, args: argparse.Namespace, title: str, failed: list, retry: bool = True
) -> int:
    """Print the table of the trials that finished, write OUT/report/, list the failures;
    1 when a trial failed, else 0."""
    from retain.report import collect, make_report, markdown_table, write_report
    from retain.report.layout import heads_line
    from retain.sweep import REPORT_DIR
    from retain.trials import folder_lock

    collection = collect([t.run_dir for t in trials])
    for skipped in collection.skipped:
        _warn(skipped.message())
    if collection.runs:
        report = make_report(collection, note=args.note, title=title)
        if args.note:
            print(args.note, end="\n\n")
        for section in report.sections:
            print(f"{section.table.title}\n\n{markdown_table(section.table)}\n")
            print(f"{heads_line(section.table)}\n")
        with folder_lock(out / f".{REPORT_DIR}.lock"):  # two compares on one --out
            written = write_report(report, out / REPORT_DIR)
        print(f"retain: wrote {' and '.join(str(p) for p in written)}", file=sys.stderr)
    for result in failed:
        print(f"retain: trial failed: {result.run_dir}: {result.error}", file=sys.stderr)
    if failed:
        hint = (
            "run the same command again to retry them (finished trials are skipped)"
            if retry
            else "their points count as failed in the search"
        )
        print(f"retain: {len(failed)} trials failed; {hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
