"""BatchNorm with running statistics per task, for masked methods (WSN's ``task_norm``).

WSN's official networks use BatchNorm without affine parameters and without running
statistics: every batch, also at test time, is normalised by its own statistics, so a test
sample's prediction depends on the other samples of its batch. :class:`TaskBatchNorm` keeps one
set of running statistics per task instead: training task ``t`` normalises by the batch and
updates row ``t`` only; evaluation of task ``t`` uses row ``t``. No later task ever writes an
earlier task's row, so old tasks stay exact, and their predictions no longer depend on the
test batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskBatchNorm(nn.Module):
    """Non-affine BatchNorm over dimension 1 with one row of running statistics per task;
    ``task`` selects the row (set by the method before a forward pass)."""

    def __init__(
        self, num_features: int, n_tasks: int, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.task = 0
        self.register_buffer("running_mean", torch.zeros(n_tasks, num_features))
        self.register_buffer("running_var", torch.ones(n_tasks, num_features))

    def forward(self, x: Tensor) -> Tensor:
        mean, var = self.running_mean[self.task], self.running_var[self.task]  # views
        return F.batch_norm(
            x, mean, var, None, None, self.training, self.momentum, self.eps
        )  # in training, updates row ``task`` in place

    def extra_repr(self) -> str:
        return f"{self.num_features}, tasks={self.running_mean.shape[0]}, eps={self.eps}"


def use_task_norm(module: nn.Module, n_tasks: int) -> list[TaskBatchNorm]:
    """Replace every statistics-free BatchNorm (no affine parameters, no running statistics)
    in ``module`` by a :class:`TaskBatchNorm` for ``n_tasks`` tasks; returns the new layers."""
    out = []
    device = next(module.parameters()).device
    for name, child in list(module.named_modules()):
        if (
            isinstance(child, nn.modules.batchnorm._BatchNorm)
            and not child.affine
            and not child.track_running_stats
        ):
            parent, _, attr = name.rpartition(".")
            momentum = 0.1 if child.momentum is None else child.momentum
            new = TaskBatchNorm(child.num_features, n_tasks, child.eps, momentum)
            setattr(module.get_submodule(parent), attr, new.to(device))
            out.append(new)
    return out


def set_task(layers: list[TaskBatchNorm], task_id: int) -> None:
    for layer in layers:
        layer.task = task_id
