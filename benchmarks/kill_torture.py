"""Kill `retain run` at random, resume it until it is done, compare with an uninterrupted run.

For every registered method (tiny settings: split-digits, 2 epochs per task, a 32-unit MLP,
``checkpoint_every=1``; ScrollNet over finetune; Dynamos on its reduced ResNet at ``nf=4``),
one process at a time:

1. run ``retain run --config CFG --out ref/METHOD`` uninterrupted and time it (T seconds);
2. run it again in ``killed/METHOD`` and send a random signal (SIGKILL, SIGTERM or SIGINT):
   a quarter of the signals at a random time in [0, T], the others in training, 0-20 ms after
   a random epoch ends (its line in events.jsonl; between the reference run's config.yaml and
   its complete metrics.json where a method logs no epochs). A run that ends before its signal
   is a miss; a signal while a finished run exits is ignored (exit 0; counted apart). Continue
   with ``retain run --resume killed/METHOD`` (or the first command again if the kill came
   before anything was written), which may be killed again, ``--kills-per-method`` signals in
   all, then without;
3. compare ``metrics.json`` byte for byte with the uninterrupted run.

It counts the kills, resumes, identical and different results, stuck folders (a command
that refuses to continue the folder) and tracebacks (any stderr holding "Traceback")::

    python benchmarks/kill_torture.py --kills-per-method 2 --seed 0 --out /tmp/kill-torture

Exit code 1 if a result differs, a folder is stuck or a traceback was seen.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

COMMON = {
    "benchmark": "split-digits",
    "epochs": 2,
    "seed": 0,
    "batch_size": 32,
    "lr": 0.05,
    "checkpoint_every": 1,
    "model_args": {"hidden": [32]},
}
#: method -> overrides of COMMON (as benchmarks/behaviour_snapshot.py)
SPECIAL: dict[str, dict] = {
    "scrollnet": {"method_args": {"base": "finetune", "splits": 2}},
    "eidetic": {"method_args": {"patience": 1, "max_recovery_epochs": 1, "step": 0.3}},
    "dynamos": {"model": "reduced-resnet18", "model_args": {"nf": 4}, "epochs": 1},
}
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
#: exit codes of a run stopped by each signal (SIGKILL: killed by the OS; the others: retain)
STOPPED = {"SIGKILL": -signal.SIGKILL, "SIGTERM": 143, "SIGINT": 130}
CLI = [sys.executable, "-m", "retain.cli", "run", "--quiet"]


def config(method: str) -> dict:
    special = SPECIAL.get(method, {})
    cfg = {**COMMON, **special, "method": method}
    if "model" not in special:
        cfg["model_args"] = {**COMMON["model_args"], **special.get("model_args", {})}
    return cfg


def _child() -> None:  # a background shell may start us with SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finished(run: Path) -> bool:
    try:
        m = json.loads((run / "metrics.json").read_text())["task_aware"]
        return len(m["rows"]) == m["n_tasks"]
    except (OSError, ValueError, KeyError):
        return False


def _lines(run: Path) -> int:
    try:
        return len((run / "events.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _wait_for_epoch(proc: subprocess.Popen, run: Path, n: int, rng: random.Random) -> None:
    """Return 0-20 ms after ``run``'s events.jsonl holds ``n`` lines; raise TimeoutExpired
    then (the signal is due), or return if the process ends first (a miss)."""
    while proc.poll() is None:
        if _lines(run) >= n:
            time.sleep(rng.uniform(0, 0.02))
            raise subprocess.TimeoutExpired(proc.args, 0)
        time.sleep(0.002)


def launch(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_child
    )


class Tally:
    def __init__(self) -> None:
        self.kills = {name: 0 for name in SIGNALS}
        self.resumes = self.restarts = self.tracebacks = self.missed = self.at_exit = 0
        self.stuck: list[str] = []
        self.errors: list[str] = []

    def look(self, method: str, err: str) -> None:
        if "Traceback" in err:
            self.tracebacks += 1
            self.errors.append(f"{method}: traceback: {err.strip().splitlines()[-1]}")


def torture(method: str, out: Path, kills: int, rng: random.Random, tally: Tally) -> str:
    """``identical``, ``DIFFERENT``, ``STUCK`` or ``FAILED`` for ``method``."""
    cfg_file = out / "configs" / f"{method}.yaml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(yaml.safe_dump(config(method), sort_keys=False))
    ref, run = out / "ref" / method, out / "killed" / method
    for d in (ref, run):
        shutil.rmtree(d, ignore_errors=True)
    start = [*CLI, "--config", str(cfg_file), "--out", str(run)]
    t0 = time.perf_counter()
    p = launch([*CLI, "--config", str(cfg_file), "--out", str(ref)])
    while p.poll() is None and not (ref / "config.yaml").exists():
        time.sleep(0.01)
    setup = time.perf_counter() - t0  # start-up: imports, data, model, until config.yaml
    while p.poll() is None and not _finished(ref):
        time.sleep(0.01)
    trained = time.perf_counter() - t0  # then the exit (torch's finalizers) until T
    _, err = p.communicate()
    took = time.perf_counter() - t0
    tally.look(method, err)
    if p.returncode != 0:
        tally.errors.append(f"{method}: reference run failed: {err.strip()[-300:]}")
        return "FAILED"
    epochs = _lines(ref)
    left, finished, first = kills, False, True
    while not finished:
        if not (run / "config.yaml").is_file():
            cmd = start  # killed before anything was written: the same command again
            tally.restarts += not first
        else:
            cmd = [*CLI, "--resume", str(run)]
            tally.resumes += 1
        proc, killed, first = launch(cmd), None, False
        if left > 0:
            name = rng.choice(sorted(SIGNALS))
            # a quarter of the kills anywhere in time, the others in training: just after the
            # epoch ``target`` (a line of events.jsonl) ends, or between S and E if it has none
            at, target = rng.uniform(0, took), rng.randint(1, max(epochs, 1))
            in_training = rng.random() < 0.75
            if in_training:
                at = setup + rng.uniform(0, trained - setup)
            try:
                if in_training and epochs:
                    _wait_for_epoch(proc, run, max(target, _lines(run) + 1), rng)
                else:
                    proc.wait(timeout=at)
            except subprocess.TimeoutExpired:
                proc.send_signal(SIGNALS[name])
                tally.kills[name] += 1
                killed = name
            else:
                tally.missed += 1
            left -= 1
        _, err = proc.communicate()
        tally.look(method, err)
        if proc.returncode == 0:
            finished = True
            tally.at_exit += killed is not None
        elif killed is not None and proc.returncode != STOPPED[killed]:
            tally.errors.append(f"{method}: {killed} gave exit code {proc.returncode}")
        elif killed is None:  # not killed, and it did not finish: the folder is stuck
            tally.stuck.append(f"{method}: rc {proc.returncode}: {err.strip()[-300:]}")
            return "STUCK"
    same = (ref / "metrics.json").read_bytes() == (run / "metrics.json").read_bytes()
    return "identical" if same else "DIFFERENT"


def main() -> int:
    from retain.methods import REGISTRY

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="all", help="comma-separated names, or all")
    p.add_argument("--kills-per-method", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/kill-torture")
    args = p.parse_args()
    methods = sorted(REGISTRY) if args.methods == "all" else args.methods.split(",")
    out = Path(args.out)
    rng = random.Random(args.seed)
    tally = Tally()
    outcome: dict[str, str] = {}
    t0 = time.perf_counter()
    for method in methods:
        k = dict(tally.kills)
        r = tally.resumes
        outcome[method] = torture(method, out, args.kills_per_method, rng, tally)
        n = sum(tally.kills.values()) - sum(k.values())
        line = f"{method:<14} {outcome[method]:<10} kills {n}, resumes {tally.resumes - r}"
        print(line, flush=True)
    values = list(outcome.values())
    rows = [
        ("methods", len(methods)),
        ("kills", sum(tally.kills.values())),
        *((f"  {name}", n) for name, n in tally.kills.items()),
        ("signals while a finished run exited (ignored, exit 0)", tally.at_exit),
        ("missed (the run ended before its signal)", tally.missed),
        ("resumes (`retain run --resume DIR`)", tally.resumes),
        ("first command again (killed before config.yaml)", tally.restarts),
        ("identical metrics.json", values.count("identical")),
        ("different", values.count("DIFFERENT")),
        ("stuck", len(tally.stuck)),
        ("failed", values.count("FAILED")),
        ("tracebacks", tally.tracebacks),
        ("wall seconds", round(time.perf_counter() - t0)),
    ]
    print("\n| | |\n|---|---:|")
    for label, n in rows:
        print(f"| {label} | {n} |")
    for line in tally.stuck + tally.errors:
        print(line)
    (out / "summary.json").write_text(json.dumps({"outcome": outcome, "rows": rows}, indent=1))
    bad = values.count("DIFFERENT") + len(tally.stuck) + values.count("FAILED") + tally.tracebacks
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
