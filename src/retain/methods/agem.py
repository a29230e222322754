"""Averaged Gradient Episodic Memory: project the gradient so the memory's loss cannot rise."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from retain.core.buffers import ExemplarMemory
from retain.data.benchmark import Task
from retain.methods.base import Batch, Method, register


def project_gradient(g: Tensor, g_ref: Tensor, eps: float = 1e-12) -> Tensor:
    """A-GEM's projection (Chaudhry et al. 2019, Eq. 11): ``g`` if ``g . g_ref >= 0``, else
    ``g - (g . g_ref) / (g_ref . g_ref) * g_ref``, whose dot product with ``g_ref`` is 0.

    Branch-free (no host sync): the coefficient is ``min(g . g_ref, 0) / |g_ref|^2``."""
    dot = torch.dot(g, g_ref)
    coef = dot.clamp(max=0) / torch.dot(g_ref, g_ref).clamp_min(eps)
    return g - coef * g_ref


def _flat(grads: list[Tensor | None], params: list[nn.Parameter]) -> Tensor:
    """One flat vector of per-parameter gradients (zeros where a gradient is None)."""
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


@register
class AGEM(Method):
    """A-GEM, Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM" (ICLR).

    GEM's constraint ``<g, g_k> >= 0`` for every past task ``k`` is relaxed to one constraint
    on the average episodic-memory loss: after ``backward()`` (in ``after_backward``) a
    reference gradient ``g_ref`` is computed on a random batch from the episodic memory of all
    past tasks, and the training gradient is projected, ``g <- g - (g.g_ref)/(g_ref.g_ref) g_ref``
    when ``g.g_ref < 0`` (Eq. 11), over all parameters as one flat vector.

    The episodic memory gets random samples of every task after it is trained, class-balanced
    (:class:`~retain.core.buffers.ExemplarMemory`): the paper counts memory as samples per class
    (``per_class=True``); ``per_class=False`` shares a fixed total between the classes seen.

    Args:
        memory_size: total memory, or samples per class with ``per_class``.
        per_class: see ``memory_size``.
        minibatch_size: reference batch size (the paper's 256).
        loss_heads: ``"seen"`` (default; one growing head, also for the reference loss) or
            ``"task"``.

    Deviations and choices: docs/methods/agem.md
    """

    name = "agem"
    data_parallel = False
    data_parallel_note = "its replay buffer, filled from training batches, would differ per process"
    train_seen_heads = True  # replayed samples train their own heads with either loss_heads

    def __init__(
        self,
        memory_size: int = 200,
        per_class: bool = False,
        minibatch_size: int = 256,
        loss_heads: str = "seen",
    ) -> None:
        super().__init__(loss_heads=loss_heads)
        if minibatch_size < 1:
            raise ValueError(f"minibatch_size must be at least 1, got {minibatch_size}")
        self.memory = ExemplarMemory(memory_size, per_group=per_class)
        self.minibatch_size = int(minibatch_size)

    def _parameters(self) -> list[nn.Parameter]:
        assert self.model is not None
        return [p for p in self.model.parameters() if p.requires_grad]

    def reference_gradient(self, params: list[nn.Parameter], task: Task) -> list[Tensor | None]:
        """Gradient of the loss of a random memory batch (per parameter; None if unused).
        Leaves ``.grad`` untouched."""
        assert self.model is not None
        m = self.memory.sample(self.minibatch_size)
        batch = Batch(m["x"], m["y"], m["task_ids"])
        with torch.enable_grad():
            logits = self.model(batch.x, upto=self.current_task + 1)
            loss = self.cross_entropy(logits, batch, task)
            return list(torch.autograd.grad(loss, params, allow_unused=True))

    def after_backward(self, batch: Batch, task: Task) -> None:
        if self.memory.is_empty:
            return
        params = self._parameters()
        g_ref = self.reference_gradient(params, task)
        used = [p.grad is not None or r is not None for p, r in zip(params, g_ref)]
        params = [p for p, u in zip(params, used) if u]
        g_ref = [r for r, u in zip(g_ref, used) if u]
        g = _flat([p.grad for p in params], params)
        r = _flat(g_ref, params)
        new = project_gradient(g, r)
        offset = 0
        for p in params:
            k = p.numel()
            p.grad = new[offset : offset + k].view_as(p)
            offset += k

    def after_task(self, task: Task) -> None:
        groups = task.class_offset + task.y_train
        self.memory.add(
            task.x_train,
            task.y_train,
            torch.full_like(task.y_train, task.id),
            groups,
            selection="random",
            n_groups=task.class_offset + task.n_classes,
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
