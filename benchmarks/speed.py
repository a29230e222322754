"""Engine overhead: ``retain.fit`` against a bare PyTorch loop, in one process.

Both train the same model (same initial weights) on the same in-memory tensors with the same
batch size, optimiser and number of epochs, and both evaluate every task after every task the
same way. The runs alternate (bare, retain, bare, retain, ...) so that machine noise hits both;
the ratio of the medians is reported. ``--methods`` adds other methods' time over finetune's.

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


def bare_loop(model, bench, epochs: int, batch_size: int, lr: float, seed: int) -> float:
    """The reference: the loop anyone would write by hand. Returns seconds."""
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
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
        model.eval()
        with torch.inference_mode():
            for other in bench:
                upto = max(task.id + 1, other.id + 1)
                for start in range(0, len(other.y_test), 1000):
                    x = other.x_test[start : start + 1000]
                    logits = model(x, upto=upto)
                    logits.argmax(1)
                    s = other.class_offset
                    logits[:, s : s + other.n_classes].argmax(1)
    return time.perf_counter() - t0


def retain_fit(model, bench, method: str, epochs: int, batch_size: int, lr: float, seed: int):
    t0 = time.perf_counter()
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
    return time.perf_counter() - t0


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
    times: dict[str, list[float]] = {"bare": [], "finetune": [], **{m: [] for m in methods}}
    for rep in range(args.repeats):
        times["bare"].append(bare_loop(copy.deepcopy(base), *common))
        times["finetune"].append(retain_fit(copy.deepcopy(base), bench, "finetune", *common[1:]))
        for m in methods:
            times[m].append(retain_fit(copy.deepcopy(base), bench, m, *common[1:]))
        print(
            f"repeat {rep}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
            file=sys.stderr,
            flush=True,
        )

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"benchmark {args.benchmark}, model {args.model} {args.hidden}, epochs {args.epochs}, "
        f"batch {args.batch_size}, threads {args.threads}, repeats {args.repeats} (medians)"
    )
    print("| run | seconds | ratio |\n|---|---|---|")
    print(f"| bare PyTorch loop | {med['bare']:.2f} | 1.000 |")
    print(f"| retain.fit finetune | {med['finetune']:.2f} | {med['finetune'] / med['bare']:.3f} |")
    for m in methods:
        print(f"| retain.fit {m} (over finetune) | {med[m]:.2f} | {med[m] / med['finetune']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
