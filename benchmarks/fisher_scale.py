"""The scale of EWC's Fisher per parameter tensor, to choose a stable lambda.

Trains a network on the first two tasks of a benchmark (plain SGD, as ``finetune``), then
computes EWC's Fisher (retain's default estimator) on the second task's training data, as EWC
consolidates after that task, and prints the largest and mean entry of every tensor. Plain
SGD on the penalty ``lamb / 2 * F (theta - theta*)^2`` is stable only while
``lr * lamb * max F < 2``; the script prints that bound.

    python benchmarks/fisher_scale.py --benchmark rotated-fmnist \
        --benchmark-args train_per_class=100,test_per_class=30 --model alexnet \
        --model-args drop1=0.492,drop2=0.485 --epochs 10 --lr 0.1
"""

from __future__ import annotations

import argparse
import sys

import torch

from retain import config_yaml
from retain.core.estimators import make_importance
from retain.data import Benchmark, get_benchmark
from retain.engine import fit
from retain.methods import make_method
from retain.models import build_model


def parse_kv(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key] = config_yaml.load(value)  # 1e-3 is a number, as in configs
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="rotated-fmnist")
    p.add_argument("--benchmark-args", default="")
    p.add_argument("--model", default="mlp")
    p.add_argument("--model-args", default="")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    full = get_benchmark(args.benchmark, **parse_kv(args.benchmark_args))
    if full.n_tasks < 2:
        print("fisher_scale: the benchmark needs at least 2 tasks", file=sys.stderr)
        return 2
    bench = Benchmark(full.name, full.tasks[:2], full.input_shape)
    torch.manual_seed(args.seed)
    model = build_model(
        args.model, bench.input_shape, bench.classes_per_task, **parse_kv(args.model_args)
    )
    fit(model, bench, make_method("finetune"), epochs=args.epochs, batch_size=64, lr=args.lr)
    estimator = make_importance("fisher")
    estimator.setup({"backbone." + n: q for n, q in model.backbone.named_parameters()})
    fisher = estimator.compute(model, bench[1], "task")
    print("| tensor | shape | max F | mean F |")
    print("|---|---|---|---|")
    for name, f in fisher.items():
        print(f"| {name} | {tuple(f.shape)} | {f.max().item():.3g} | {f.mean().item():.3g} |")
    top = max(f.max().item() for f in fisher.values())
    bound = 2 / (args.lr * top)
    print(f"largest entry {top:.3g}: SGD at lr {args.lr} is stable for lamb < {bound:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
