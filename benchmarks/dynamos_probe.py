"""Why Dynamos collapses on the mnist360-5k stream: one run with the loss of every step
recorded, a NaN check, the keep ratios and the predicted-class histogram on the test set.

    python benchmarks/dynamos_probe.py            # Table 5's buffer-200 row, seed 0, nf = 8
"""

from __future__ import annotations

import math

import torch

from retain.data import get_benchmark
from retain.engine import fit
from retain.engine.trainer import seed_everything
from retain.methods import make_method
from retain.models import build_model


def main() -> int:
    torch.set_num_threads(1)
    bench = get_benchmark("mnist360-5k")
    seed_everything(0)
    model = build_model("reduced-resnet18", bench.input_shape, bench.classes_per_task, nf=8)
    method = make_method(
        "dynamos",
        memory_size=200,
        alpha=0.2,
        beta=1.5,
        alpha_p=0.1,
        penalty=200,
        gamma=1.0,
        w_p=0.5,
    )
    losses: list[float] = []
    loss_fn = method.loss

    def recorded(batch, task):
        value = loss_fn(batch, task)
        losses.append(float(value.detach()))
        return value

    method.loss = recorded  # type: ignore[method-assign]
    result = fit(model, bench, method, epochs=1, lr=0.07, batch_size=16, seed=0)
    finite = [v for v in losses if math.isfinite(v)]
    print(
        f"final accuracy {100 * result.task_agnostic.acc():.2f} %, {len(losses)} steps, "
        f"{len(losses) - len(finite)} non-finite losses"
    )
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    print("parameters with NaN/inf:", bad or "none")
    print("loss every 15 steps:", [round(v, 2) for v in losses[::15]])
    print("keep ratio per agent:", result.method_metrics.get("keep_ratio"))
    model.eval()
    with torch.no_grad():
        predicted = model(bench[0].x_test[:300]).argmax(1)
    print(
        "predicted classes of the first 300 test images:",
        torch.bincount(predicted, minlength=9).tolist(),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
