"""WSN: Winning SubNetworks, forget-free continual learning (Kang et al., ICML 2022)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from retain.core.freeze import Freezer
from retain.core.masks import (
    MaskBank,
    ScoreMask,
    attach,
    isolation_layers,
    mask_of,
    raw_weight,
)
from retain.core.task_norm import TaskBatchNorm, set_task, use_task_norm
from retain.data.benchmark import Task
from retain.methods.base import Batch, Method, register


@register
class WSN(Method):
    """WSN: one learned top-c subnetwork per task inside a dense net; used weights frozen.

    Kang, Mina, Madjid, Yoon, Hasegawa-Johnson, Hwang & Yoo, "Forget-free Continual Learning
    with Winning Subnetworks", ICML 2022, Algorithm 1. Every ``nn.Linear`` / ``nn.Conv2d`` of
    the backbone carries a real score ``s`` per weight beside the weight ``theta``. Task ``t``:

    * lines 3-4: ``m_t`` = the top-``capacity`` fraction of ``|s|`` in each layer (exactly
      ``round(c * n)`` of a layer's ``n`` weights), taken in every forward pass;
    * line 5: the loss is computed with the weights ``theta * m_t``;
    * line 6: ``theta <- theta - lr * dL/dtheta * (1 - M_{t-1})``: weights of earlier tasks
      never change, exactly under any optimiser (``retain.core.freeze.Freezer``);
    * line 7: the scores always learn, straight-through: ``dL/ds = sign(s) dL/d(theta m) theta``;
    * line 9, after the task: ``M_t = M_{t-1} OR m_t``; ``m_t`` is stored, coded given
      ``M_{t-1}``.

    Task ``t`` is evaluated with its stored mask and its own head (task-aware only, BWT = 0).
    ``extra_metrics()`` holds ``capacity`` (CAP from the real encoded masks) and ``reuse``.

    Args:
        capacity: ``c``, the fraction of each layer's weights a task's mask keeps (the
            official scripts' ``--sparsity``).
        reset_scores: re-initialise the scores before every task after the first (default
            ``False``: shared across tasks and never reset, as the official code).
        task_norm: give every statistics-free BatchNorm running statistics per task
            (:class:`~retain.core.task_norm.TaskBatchNorm`), so test predictions do not depend
            on the test batch; default ``False``: batch statistics, as the official code.

    Deviations and choices: docs/methods/wsn.md
    """

    name = "wsn"
    task_agnostic = False
    shared_forward = False

    def __init__(
        self, capacity: float = 0.5, reset_scores: bool = False, task_norm: bool = False
    ) -> None:
        super().__init__(loss_heads="task")
        if not 0.0 < capacity <= 1.0:
            raise ValueError(f"capacity must be in (0, 1], got {capacity}")
        self.capacity = float(capacity)
        self.reset_scores = bool(reset_scores)
        self.task_norm = bool(task_norm)
        self.norms: list[TaskBatchNorm] = []
        self.layers: dict[str, nn.Module] = {}
        self.bank = MaskBank()
        self.freezer = Freezer()
        self.reuse: list[dict[str, dict[str, int]]] = []  # per task, per layer
        self._eval: tuple[int, dict[str, Tensor]] | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, model, info) -> None:
        super().setup(model, info)
        self.layers = isolation_layers(model, self.name, "mask")
        if self.task_norm:
            if info is None:
                raise ValueError("wsn: task_norm needs the number of tasks (setup's info)")
            self.norms = use_task_norm(model.backbone, info.n_tasks)
            if not self.norms:
                raise ValueError(
                    "wsn: task_norm asked for, but the backbone has no statistics-free BatchNorm"
                )
        for layer in self.layers.values():
            w = layer.weight
            attach(layer, ScoreMask(w.shape, self.capacity)).to(device=w.device, dtype=w.dtype)

    def weights(self) -> dict[str, nn.Parameter]:
        """The masked weights ``theta`` by layer name."""
        return {name: raw_weight(layer) for name, layer in self.layers.items()}

    def scores(self) -> dict[str, nn.Parameter]:
        """The scores ``s`` by layer name."""
        return {name: mask_of(layer).scores for name, layer in self.layers.items()}

    def used(self, name: str, device: torch.device | str | None = None) -> Tensor:
        """``M`` of layer ``name``: the weights used by any stored task (all False at first)."""
        if name in self.bank.shapes:
            return self.bank.union(name, device=device)
        return torch.zeros(raw_weight(self.layers[name]).shape, dtype=torch.bool, device=device)

    def _prepare(self) -> None:
        """Freeze the weights of ``M_{t-1}`` (before a task, or after a mid-task resume)."""
        self.freezer.clear()
        for name, w in self.weights().items():
            self.freezer.freeze(w, self.used(name, w.device))

    # ------------------------------------------------------------------ training
    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self._eval = None
        for layer in self.layers.values():
            mask = mask_of(layer)
            mask.mask = None
            if self.reset_scores and task.id > 0:
                mask.reset_scores()
        set_task(self.norms, task.id)
        self._prepare()

    def resume_task(self, task: Task) -> None:
        super().resume_task(task)
        set_task(self.norms, task.id)
        self._prepare()

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        """Weights and scores of every masked layer, the task's head, and (first task only)
        any other backbone parameter (biases)."""
        assert self.model is not None
        weights, scores = list(self.weights().values()), list(self.scores().values())
        ids = {id(p) for p in weights + scores}
        others = [p for p in self.model.backbone.parameters() if id(p) not in ids]
        return (
            weights
            + scores
            + (others if task.id == 0 else [])
            + self.model.head_parameters([task.id])
        )

    def after_backward(self, batch: Batch, task: Task) -> None:
        self.freezer.mask_grads()  # Algorithm 1, line 6: dL/dtheta * (1 - M_{t-1})

    def after_step(self, batch: Batch, task: Task) -> None:
        self.freezer.restore()  # exact under weight decay / momentum / AdamW

    @torch.no_grad()
    def after_task(self, task: Task) -> None:
        masks = {name: mask_of(layer).current_mask().cpu() for name, layer in self.layers.items()}
        before = {name: self.used(name, "cpu") for name in self.layers}  # M_{t-1}
        every = self._shared_with_all(task.id)
        stats: dict[str, dict[str, int]] = {}
        for name, m in masks.items():
            reused = int((m & before[name]).sum())
            stats[name] = {
                "kept": int(m.sum()),
                "reused": reused,
                "new": int(m.sum()) - reused,
                "shared_with_all": int((m & every[name]).sum()) if every else 0,
                "used_after": int((m | before[name]).sum()),
            }
        self.bank.add(task.id, masks, given=before)  # line 9: M_t = M_{t-1} OR m_t
        for name in self.layers:
            stats[name]["code_bits"] = 8 * len(self.bank.code(task.id, name))
        del self.reuse[task.id :]
        self.reuse.append(stats)
        self.freezer.clear()
        self._eval = None

    def _shared_with_all(self, upto: int) -> dict[str, Tensor] | None:
        """Per layer, the weights in the mask of every task ``< upto`` (None when upto = 0)."""
        if upto == 0:
            return None
        out = {}
        for name in self.layers:
            acc = self.bank.packed(0, name)
            for t in range(1, upto):
                acc = acc & self.bank.packed(t, name)
            out[name] = acc.to_tensor()
        return out

    # ------------------------------------------------------------------ inference
    def forward_task(self, x: Tensor, task_id: int) -> Tensor:
        """Task-aware logits of ``task_id`` with its stored mask and its head (a task not
        learned yet: the mask the current scores select)."""
        assert self.model is not None
        first = next(iter(self.layers))
        learned = task_id < self.bank.n_tasks and self.bank.has(task_id, first)
        if learned and (self._eval is None or self._eval[0] != task_id):
            w = self.weights()
            masks = {
                name: self.bank.get(task_id, name, device=w[name].device).to(w[name].dtype)
                for name in self.layers
            }
            self._eval = (task_id, masks)
        set_task(self.norms, task_id)  # its BatchNorm statistics (task_norm)
        try:
            if learned:
                for name, layer in self.layers.items():
                    mask_of(layer).mask = self._eval[1][name]
            return self.model(x, task_id=task_id)
        finally:
            if learned:
                for layer in self.layers.values():
                    mask_of(layer).mask = None
            set_task(self.norms, max(self.current_task, 0))

    # ------------------------------------------------------------------ reports and state
    def capacity_report(self) -> dict[str, Any]:
        """Per masked layer and overall after the tasks so far: weights used (``M_t``) and
        free, the used fraction after every task, the task masks' memory (raw bits, packed
        bytes, encoded bytes) and CAP (``total.cap``, ``total.cap_raw``)."""
        if self.bank.n_tasks == 0:
            return {}
        return self.bank.report(self.layers)

    def reuse_report(self) -> dict[str, Any]:
        """Per layer and overall, one value per learned task: weights kept by ``m_t``,
        reused from ``M_{t-1}``, newly claimed, shared with every earlier task's mask, used
        after the task (``|M_t|``), and the bits of the task's mask code."""
        if not self.reuse:
            return {}
        keys = list(self.reuse[0][next(iter(self.layers))])
        layers = {
            name: {k: [task[name][k] for task in self.reuse] for k in keys} for name in self.layers
        }
        total = {k: [sum(task[n][k] for n in self.layers) for task in self.reuse] for k in keys}
        weights = sum(raw_weight(layer).numel() for layer in self.layers.values())
        total["raw_bits"] = [weights] * len(self.reuse)
        return {"layers": layers, "total": total}

    def extra_metrics(self) -> dict[str, Any]:
        return {"capacity": self.capacity_report(), "reuse": self.reuse_report()}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "bank": self.bank.state_dict(),
            "reuse": [dict(t) for t in self.reuse],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bank.load_state_dict(state["bank"])
        self.reuse = [dict(t) for t in state["reuse"]]  # (older checkpoints: also "training")
        self._eval = None
        self.freezer.clear()
