"""PackNet: iterative pruning packs tasks into one network (Mallya & Lazebnik, CVPR 2018)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from retain.core.freeze import Freezer
from retain.core.masks import (
    MaskBank,
    WeightMask,
    attach,
    isolation_layers,
    mask_of,
    raw_weight,
    topk_mask,
)
from retain.data.benchmark import Task
from retain.methods.base import Batch, Method, procedure, register


@register
class PackNet(Method):
    """PackNet: train, prune the free weights by magnitude, retrain, freeze (task-aware).

    Mallya & Lazebnik, "PackNet: Adding Multiple Tasks to a Single Network by Iterative
    Pruning", CVPR 2018, Sec. 3 (the paper has no numbered equations). For task ``t``:

    1. Train on task ``t`` all weights not owned by an earlier task (the *free* weights, which
       earlier pruning left at zero); owned weights are used in the forward pass but frozen.
    2. In every ``nn.Linear`` / ``nn.Conv2d`` of the backbone, prune ``prune_ratio`` of the free
       weights with the smallest magnitude (set them to zero; they stay free for later tasks).
       The rest become task ``t``'s weights.
    3. Retrain the kept weights for ``retrain_epochs`` with the pruned ones held at zero.
    4. Freeze them. Task ``t``'s inference mask is every weight owned by tasks ``0..t``.

    Frozen values are exact under any optimiser, so a task's task-aware predictions never
    change after it is learned (BWT = 0). Task-aware only: prediction needs the task's mask.

    Args:
        prune_ratio: fraction of the free weights of each layer released after every task
            (0.5 or 0.75 in the paper). ``None``: an equal share of the layer for every task,
            i.e. task ``t`` keeps ``1 / (T - t)`` of the free weights (the last task keeps all).
        retrain_epochs: epochs of post-prune retraining (default: half the task's epochs,
            rounded up; 0 skips it).

    Deviations and choices: docs/methods/packnet.md
    """

    name = "packnet"
    own_procedure = True  # train_task: see retain.methods.base.procedure
    task_agnostic = False
    shared_forward = False

    def __init__(self, prune_ratio: float | None = 0.5, retrain_epochs: int | None = None) -> None:
        super().__init__(loss_heads="task")
        if prune_ratio is not None and not 0.0 <= prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must be in [0, 1) or None, got {prune_ratio}")
        if retrain_epochs is not None and retrain_epochs < 0:
            raise ValueError(f"retrain_epochs must be >= 0, got {retrain_epochs}")
        self.prune_ratio = prune_ratio
        self.retrain_epochs = retrain_epochs
        self.layers: dict[str, nn.Module] = {}
        self.bank = MaskBank()
        self.freezer = Freezer()
        self._phase = "idle"  # idle | train | retrain
        self._keep: dict[str, Tensor] | None = None
        self._eval: tuple[int, dict[str, Tensor]] | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, model, info) -> None:
        super().setup(model, info)
        self.layers = isolation_layers(model, self.name, "prune")
        for layer in self.layers.values():
            attach(layer, WeightMask())

    def _weights(self) -> dict[str, nn.Parameter]:
        return {name: raw_weight(layer) for name, layer in self.layers.items()}

    def _owned(self, name: str, upto: int, device) -> Tensor:
        """Weights of layer ``name`` owned by tasks ``< upto``."""
        if name not in self.bank.shapes or upto == 0:
            return torch.zeros(self._weights()[name].shape, dtype=torch.bool, device=device)
        return self.bank.union(name, range(upto), device=device)

    def _prepare(self) -> None:
        """Freeze what the current phase must not change (also after a mid-task resume)."""
        self.freezer.clear()
        t = self.current_task
        for name, w in self._weights().items():
            if self._phase == "retrain":
                assert self._keep is not None
                frozen = ~self._keep[name].to(w.device)  # owned by earlier tasks, or pruned
            else:
                frozen = self._owned(name, t, w.device)
            self.freezer.freeze(w, frozen)

    # ------------------------------------------------------------------ training
    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self._phase, self._keep, self._eval = "train", None, None
        self._prepare()

    def resume_task(self, task: Task) -> None:
        """The phase (training or retraining after the prune) and the kept weights come from
        the state; freeze what that phase must not change."""
        super().resume_task(task)
        self._prepare()

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        assert self.model is not None
        weights = list(self._weights().values())
        ids = {id(w) for w in weights}
        # biases and any other backbone parameter: trained with the first task only
        others = [p for p in self.model.backbone.parameters() if id(p) not in ids]
        return weights + (others if task.id == 0 else []) + self.model.head_parameters([task.id])

    def after_backward(self, batch: Batch, task: Task) -> None:
        self.freezer.mask_grads()

    def after_step(self, batch: Batch, task: Task) -> None:
        self.freezer.restore()

    def keep_fraction(self, task_id: int) -> float:
        """Fraction of the free weights of every layer that task ``task_id`` keeps."""
        if self.prune_ratio is not None:
            return 1.0 - self.prune_ratio
        assert self.model is not None
        n_tasks = self.info.n_tasks if self.info is not None else self.model.n_tasks
        return 1.0 / max(n_tasks - task_id, 1)

    @torch.no_grad()
    def prune(self) -> dict[str, Tensor]:
        """Keep the largest-magnitude ``keep_fraction`` of the free weights of every layer;
        zero the rest. Returns the kept (the task's own) weights per layer."""
        t = self.current_task
        keep = {}
        for name, w in self._weights().items():
            free = ~self._owned(name, t, w.device)
            k = round(self.keep_fraction(t) * int(free.sum()))
            # owned weights score -1, below every free |w|, so exactly k free weights are kept
            kept = topk_mask(w.abs().masked_fill(~free, -1.0), k)
            w.masked_fill_(free & ~kept, 0.0)
            keep[name] = kept
        return keep

    @procedure
    def train_task(self, task: Task, trainer) -> None:
        if self._phase == "train":  # (a resumed run may already be retraining)
            trainer.train_epochs(task)
            self._keep = self.prune()
            self._phase = "retrain"
            self._prepare()
        epochs = self.retrain_epochs
        if epochs is None:
            epochs = math.ceil(trainer.config.epochs / 2)
        if epochs > 0:
            trainer.train_epochs(task, epochs=epochs)

    def after_task(self, task: Task) -> None:
        if self._keep is None:  # trained by a loop of one's own without train_task
            self._keep = self.prune()
        free = {n: ~self._owned(n, task.id, "cpu") for n in self.layers}
        self.bank.add(task.id, self._keep, within=free)
        self._phase, self._keep, self._eval = "idle", None, None
        self.freezer.clear()

    # ------------------------------------------------------------------ inference
    def _inference_masks(self, task_id: int) -> dict[str, Tensor] | None:
        """Weights of tasks ``0..task_id`` per layer (cached for the last task asked);
        ``None`` for a task not learned yet (the current weights as they are)."""
        if task_id >= self.bank.n_tasks:
            return None
        if self._eval is None or self._eval[0] != task_id:
            w = self._weights()
            masks = {
                n: self.bank.union(n, range(task_id + 1), device=w[n].device).to(w[n].dtype)
                for n in self.layers
            }
            self._eval = (task_id, masks)
        return self._eval[1]

    def forward_task(self, x: Tensor, task_id: int) -> Tensor:
        """Task-aware logits of ``task_id`` through its mask and head."""
        assert self.model is not None
        masks = self._inference_masks(task_id)
        if masks is None:
            return self.model(x, task_id=task_id)
        try:
            for name, layer in self.layers.items():
                mask_of(layer).mask = masks[name]
            return self.model(x, task_id=task_id)
        finally:
            for layer in self.layers.values():
                mask_of(layer).mask = None

    # ------------------------------------------------------------------ reports and state
    def capacity_report(self) -> dict[str, Any]:
        """Per backbone layer and overall after the tasks so far: weights used (owned by a
        task) and free, the used fraction after every task, and the memory of the task masks
        (raw bits, bit-packed bytes, bytes after compression: each task's mask is coded only
        inside the weights that were free before it)."""
        if self.bank.n_tasks == 0:
            return {}
        return self.bank.report(self.layers)

    def extra_metrics(self) -> dict[str, Any]:
        return {"capacity": self.capacity_report()}

    def state_dict(self) -> dict[str, Any]:
        keep = None if self._keep is None else {n: m.cpu() for n, m in self._keep.items()}
        return {
            **super().state_dict(),
            "bank": self.bank.state_dict(),
            "phase": self._phase,
            "keep": keep,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bank.load_state_dict(state["bank"])
        self._phase = state["phase"]
        self._keep = state["keep"]
        self._eval = None
