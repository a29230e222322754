"""Engine overhead: ``retain.fit`` against a bare PyTorch loop, in one process.

Both train the same model (same initial weights) on the same in-memory tensors with the same
batch size, optimiser and number of epochs, and both evaluate the untrained model and then
every task after every task the same way. The runs alternate (bare, retain, bare, ...) so that
machine noise hits both; the ratio of the medians is reported, for wall time and for the
process's CPU time (with one thread, CPU time barely moves when other programs compete for the
cores; wall time does).
``--methods`` adds other methods' time over finetune's.

    python benchmarks/speed.py --benchmark split-fmnist --epochs 1 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from retain.data import get_benchmark
from retain.engine import fit
from retain.methods import make_method
from retain.models import build_model


def evaluate_all(model, bench, trained: int) -> None:
    """Test every task as fit does: one pass gives task-aware and task-agnostic predictions."""
    model.eval()
    with torch.inference_mode():
        for other in bench:
            upto = max(trained, other.id + 1)
            for start in range(0, len(other.y_test), 1000):
                logits = model(other.x_test[start : start + 1000], upto=upto)
                logits.argmax(1)
                s = other.class_offset
                logits[:, s : s + other.n_classes].argmax(1)


def bare_loop(model, bench, epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """The reference: the loop anyone would write by hand, with the same evaluation protocol
    (the untrained model once, for FWT, then every task after every task)."""
    g = torch.Generator().manual_seed(seed)
    evaluate_all(model, bench, trained=0)
    for task in bench:
        opt = torch.optim.SGD(
            list(model.backbone.parameters()) + list(model.heads[task.id].parameters()), lr=lr
        )
        x_all, y_all = task.x_train, task.y_train
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(y_all), generator=g).split(batch_size):
                loss = F.cross_entropy(model(x_all[idx], task.id), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        evaluate_all(model, bench, trained=task.id + 1)


def retain_fit(model, bench, method: str, epochs: int, batch_size: int, lr: float, seed: int):
    fit(
        model,
        bench,
        make_method(method),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=False,
    )


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--benchmark", default="split-fmnist")
    p.add_argument("--model", default="mlp")
    p.add_argument("--hidden", default="400,400", help="MLP widths")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", default="", help="comma-separated methods to time vs finetune")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    bench = get_benchmark(args.benchmark)
    kw = {"hidden": [int(h) for h in args.hidden.split(",")]} if args.model == "mlp" else {}
    torch.manual_seed(0)
    base = build_model(args.model, bench.input_shape, bench.classes_per_task, **kw)
    common = (bench, args.epochs, args.batch_size, args.lr, 0)

    methods = [m for m in args.methods.split(",") if m]
    names = ["bare", "finetune", *methods]
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    bare_loop(copy.deepcopy(base), *common)  # warm-up (first-call allocations), not timed
    retain_fit(copy.deepcopy(base), bench, "finetune", *common[1:])
    for rep in range(args.repeats):
        for name in names:
            if name == "bare":
                w, c = timed(bare_loop, copy.deepcopy(base), *common)
            else:
                w, c = timed(retain_fit, copy.deepcopy(base), bench, name, *common[1:])
            wall[name].append(w)
            cpu[name].append(c)
        print(
            f"repeat {rep}: "
            + ", ".join(f"{k} {wall[k][-1]:.2f}s wall {cpu[k][-1]:.2f}s cpu" for k in names),
            file=sys.stderr,
            flush=True,
        )

    mw = {k: statistics.median(v) for k, v in wall.items()}
    mc = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        f"benchmark {args.benchmark}, model {args.model} {args.hidden}, epochs {args.epochs}, "
        f"batch {args.batch_size}, threads {args.threads}, repeats {args.repeats} (medians)"
    )
    print("| run | wall s | wall ratio | CPU s | CPU ratio |\n|---|---|---|---|---|")
    for name in names:
        ref = "bare" if name in ("bare", "finetune") else "finetune"
        label = {"bare": "bare PyTorch loop", "finetune": "retain.fit finetune (over bare)"}.get(
            name, f"retain.fit {name} (over finetune)"
        )
        print(
            f"| {label} | {mw[name]:.2f} | {mw[name] / mw[ref]:.3f} | {mc[name]:.2f} | "
            f"{mc[name] / mc[ref]:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
