"""A backbone plus task heads: the model every method trains.

Two head layouts, chosen when the model is built:

* ``"task"`` (default): one linear head per task, as in FACIL and the task-incremental setting
  of HAT, WSN and SPG. ``forward(x, t)`` returns task ``t``'s local logits;
  ``forward(x)`` concatenates the heads in task order, which is exactly a class-incremental
  head that grows by one task's classes at a time (global label = class_offset + local label).
* ``"shared"``: one head for every task (domain-incremental, e.g. permuted MNIST with a single
  10-way output). Task ids are ignored.

All heads exist from the start (their sizes come from the benchmark), so every task, seen or
not, can be evaluated at any time; which heads count as "seen" is decided by the caller through
``upto``.

A plain module of one's own becomes a ContinualModel with :meth:`ContinualModel.wrap` (which
:func:`retain.fit` applies to the model it is given): the whole module is the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from retain.data.benchmark import Benchmark

HEAD_LAYOUTS = ("task", "shared")


class ContinualModel(nn.Module):
    """``backbone`` maps inputs to ``backbone.out_features`` features; heads map features to logits.

    Args:
        backbone: any module with an integer attribute ``out_features``.
        classes_per_task: number of classes of each task, in order.
        head: ``"task"`` (one head per task) or ``"shared"`` (one head for all tasks).
        head_bias: whether heads have a bias.
    """

    def __init__(
        self,
        backbone: nn.Module,
        classes_per_task: Sequence[int],
        head: str = "task",
        head_bias: bool = True,
    ) -> None:
        super().__init__()
        if head not in HEAD_LAYOUTS:
            raise ValueError(
                f"unknown head layout {head!r}; choose one of {', '.join(HEAD_LAYOUTS)}"
            )
        if not hasattr(backbone, "out_features"):
            raise ValueError(
                "the backbone needs an integer attribute 'out_features' (its feature size); "
                "ContinualModel.wrap(module, bench) finds it by one forward pass"
            )
        self.backbone = backbone
        self.head_layout = head
        self.classes_per_task = [int(c) for c in classes_per_task]
        d = int(backbone.out_features)
        if head == "task":
            self.heads = nn.ModuleList(
                nn.Linear(d, c, bias=head_bias) for c in self.classes_per_task
            )
        else:
            if len(set(self.classes_per_task)) != 1:
                raise ValueError("a shared head needs the same number of classes in every task")
            self.heads = nn.ModuleList([nn.Linear(d, self.classes_per_task[0], bias=head_bias)])
        offsets = [0]
        for c in self.classes_per_task[:-1]:
            offsets.append(offsets[-1] + c)
        self.register_buffer(
            "class_offsets", torch.tensor(offsets, dtype=torch.long), persistent=False
        )

    @classmethod
    def wrap(cls, model: nn.Module, benchmark: Benchmark, head: str = "task") -> nn.Module:
        """``model`` as a model every method can train, for ``benchmark``.

        A ContinualModel (or any module with its ``backbone`` and ``heads``) is returned as it
        is. Any other ``nn.Module`` is taken whole as the backbone: one forward pass, in eval
        mode and without gradients, on zeros of shape ``(2, *benchmark.input_shape)`` gives
        its feature size ``d`` (set as ``model.out_features`` when it has none), and the heads
        of ``head`` (default: one linear head ``d -> classes_per_task[t]`` per task) are added.

        Raises:
            TypeError: ``model`` is not an ``nn.Module``.
            ValueError: the forward pass fails or does not return ``[batch, d]``; its
                ``out_features`` differs from ``d``; or ``d`` equals the benchmark's number of
                classes (it looks like a whole classifier: pass it without its output layer,
                or build ``ContinualModel(backbone, bench.classes_per_task)`` yourself).
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model must be a torch nn.Module, got {type(model).__name__}")
        if isinstance(model, ContinualModel) or (
            hasattr(model, "backbone") and hasattr(model, "heads")
        ):
            return model
        d = _feature_size(model, tuple(benchmark.input_shape))
        declared = getattr(model, "out_features", None)
        if declared is not None and declared != d:
            raise ValueError(
                f"{type(model).__name__} says out_features={declared} but returns {d} features "
                f"for an input of shape {tuple(benchmark.input_shape)}"
            )
        if d == benchmark.n_classes:
            raise ValueError(
                f"{type(model).__name__} returns {d} outputs, the benchmark's number of "
                "classes: it looks like a whole classifier, and retain adds the task heads "
                "itself; pass it without its output layer (its features), or wrap it yourself: "
                "retain.ContinualModel(backbone, bench.classes_per_task) with "
                "backbone.out_features set"
            )
        if declared is None:
            model.out_features = d
        return cls(model, benchmark.classes_per_task, head=head)

    @property
    def n_tasks(self) -> int:
        return len(self.classes_per_task)

    @property
    def shared_head(self) -> bool:
        return self.head_layout == "shared"

    def head(self, task_id: int) -> nn.Linear:
        return self.heads[0] if self.shared_head else self.heads[task_id]

    def head_parameters(self, task_ids: Sequence[int]) -> list[nn.Parameter]:
        if self.shared_head:
            return list(self.heads[0].parameters())
        return [p for t in task_ids for p in self.heads[t].parameters()]

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def logits(
        self, features: Tensor, task_id: int | None = None, upto: int | None = None
    ) -> Tensor:
        """Logits from features: task ``task_id``'s head, or all heads ``< upto`` concatenated."""
        if task_id is not None or self.shared_head:
            return self.head(0 if task_id is None else task_id)(features)
        n = self.n_tasks if upto is None else upto
        return torch.cat([self.heads[t](features) for t in range(n)], dim=1)

    def forward(self, x: Tensor, task_id: int | None = None, upto: int | None = None) -> Tensor:
        return self.logits(self.backbone(x), task_id, upto)

    def global_labels(self, y: Tensor, task_ids: Tensor) -> Tensor:
        """Local labels to positions in the concatenated output (identity for a shared head)."""
        if self.shared_head:
            return y
        return y + self.class_offsets[task_ids]

    def own_task_mask(self, task_ids: Tensor, upto: int) -> Tensor:
        """Boolean ``[N, n_outputs(upto)]``: True where an output belongs to the sample's task.

        Masking the other tasks' logits to -inf turns the concatenated output into per-sample
        task-aware logits, so mixed-task batches (replay) need one forward pass only."""
        n_out = sum(self.classes_per_task[:upto])
        cls_task = torch.repeat_interleave(
            torch.arange(upto, device=task_ids.device),
            torch.tensor(self.classes_per_task[:upto], device=task_ids.device),
        )
        assert cls_task.numel() == n_out
        return cls_task.unsqueeze(0) == task_ids.unsqueeze(1)


def _feature_size(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """``d`` of a module that maps a batch of ``input_shape`` inputs to ``[batch, d]``: one
    forward pass on zeros (eval mode, no gradients; the module's mode is restored)."""
    name = type(module).__name__
    param = next(module.parameters(), None)
    x = torch.zeros(
        (2, *input_shape),
        device=None if param is None else param.device,
        dtype=torch.float32 if param is None or not param.is_floating_point() else param.dtype,
    )
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as e:  # the user's forward: any error means the shape is not its input
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"cannot find the feature size of {name}: its forward on a batch of shape "
            f"{tuple(x.shape)} failed ({first})"
        ) from e
    finally:
        module.train(training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{name} must return features of shape [batch, d] to be wrapped with task heads, "
            f"got {got} for a batch of shape {tuple(x.shape)}; flatten its output, or build "
            "retain.ContinualModel(backbone, bench.classes_per_task) yourself"
        )
    return int(out.shape[1])
