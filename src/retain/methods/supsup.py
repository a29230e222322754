"""SupSup: supermasks in superposition, task-aware scenario GG (Wortsman et al., NeurIPS 2020)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from retain.core.masks import (
    MaskBank,
    ScoreMask,
    attach,
    fan_in,
    isolation_layers,
    mask_of,
    raw_weight,
)
from retain.data.benchmark import Task
from retain.methods.base import Method, register


@register
class SupSup(Method):
    """SupSup (GG): a fixed random network and one learned supermask per task (task-aware).

    Wortsman, Ramanujan, Liu, Kembhavi, Rastegari, Yosinski & Farhadi, "Supermasks in
    Superposition", NeurIPS 2020, Sec. 3 and scenario GG (task identity given in training and
    inference; Table 1). The weights are never trained: every ``nn.Linear`` / ``nn.Conv2d``
    of the backbone (and every task head) is set once to the *signed Kaiming constant*
    ``W = sign(W_0) * sqrt(2 / fan_in)`` and frozen. For each task a supermask ``M^t`` is
    learned with edge-popup (Ramanujan et al., "What's hidden in a randomly weighted neural
    network?", CVPR 2020, Sec. 3 / Algorithm 1): a real score per weight, the forward uses
    ``W * M`` with ``M`` = the top ``density`` fraction of ``|scores|`` in each layer
    (exactly ``round(density * n)`` weights), and the scores get the straight-through
    gradient. After the task ``M^t`` is stored bit-packed; task ``t`` is evaluated with
    ``f(x, W * M^t)`` and its head. Nothing an old task uses can change (BWT = 0, bit for bit).

    Args:
        density: fraction of each layer's weights a supermask keeps (``k`` of edge-popup;
            SupSup's networks use 0.5 in most experiments).
        mask_heads: also learn a supermask on the task's own (fixed random) head, as SupSup
            masks every layer including the output one (default). ``False``: train the
            task's head as an ordinary dense layer instead.

    Deviations and choices: docs/methods/supsup.md
    """

    name = "supsup"
    task_agnostic = False
    shared_forward = False

    def __init__(self, density: float = 0.5, mask_heads: bool = True) -> None:
        super().__init__(loss_heads="task")
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        self.density = float(density)
        self.mask_heads = mask_heads
        self.layers: dict[str, nn.Module] = {}
        self.bank = MaskBank()
        self._eval: tuple[int, dict[str, Tensor]] | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, model, info) -> None:
        super().setup(model, info)
        self.layers = isolation_layers(model, self.name, "mask")
        fixed = list(self.layers.values()) + (list(model.heads) if self.mask_heads else [])
        with torch.no_grad():
            for layer in fixed:
                w = layer.weight
                w.copy_(torch.sign(w) * math.sqrt(2.0 / fan_in(w)))
                if layer.bias is not None:
                    layer.bias.zero_()
                    layer.bias.requires_grad_(False)
                attach(layer, ScoreMask(w.shape, self.density))
                raw_weight(layer).requires_grad_(False)
        scores = {id(mask_of(layer).scores) for layer in self.layers.values()}
        for p in model.backbone.parameters():  # anything else of the backbone stays fixed too
            if id(p) not in scores:
                p.requires_grad_(False)

    def _head_layer(self, task_id: int) -> nn.Module:
        assert self.model is not None
        return self.model.heads[task_id]

    def _masked(self, task_id: int) -> dict[str, nn.Module]:
        """Layers that carry task ``task_id``'s supermask: backbone (+ its head)."""
        out = dict(self.layers)
        if self.mask_heads:
            out[f"head.{task_id}"] = self._head_layer(task_id)
        return out

    # ------------------------------------------------------------------ training
    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self._eval = None
        for layer in self._masked(task.id).values():
            mask = mask_of(layer)
            mask.mask = None
            mask.reset_scores()

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        assert self.model is not None
        scores = [mask_of(layer).scores for layer in self.layers.values()]
        if self.mask_heads:
            return [*scores, mask_of(self._head_layer(task.id)).scores]
        return scores + self.model.head_parameters([task.id])

    @torch.no_grad()
    def after_task(self, task: Task) -> None:
        masks = {
            name: mask_of(layer).current_mask() for name, layer in self._masked(task.id).items()
        }
        self.bank.add(task.id, masks)
        if self.mask_heads:  # the head is this task's alone: fix its mask for good
            head = mask_of(self._head_layer(task.id))
            head.mask = masks[f"head.{task.id}"].to(head.scores.dtype)
        self._eval = None

    # ------------------------------------------------------------------ inference
    def forward_task(self, x: Tensor, task_id: int) -> Tensor:
        """Task-aware logits of ``task_id`` with its supermask and head (a task not learned
        yet uses the masks its current scores select)."""
        assert self.model is not None
        if task_id >= self.bank.n_tasks or not self.bank.has(task_id, next(iter(self.layers))):
            return self.model(x, task_id=task_id)
        if self._eval is None or self._eval[0] != task_id:
            masks = {}
            for name, layer in self.layers.items():
                w = raw_weight(layer)
                masks[name] = self.bank.get(task_id, name, device=w.device).to(w.dtype)
            self._eval = (task_id, masks)
        masks = self._eval[1]
        try:
            for name, layer in self.layers.items():
                mask_of(layer).mask = masks[name]
            return self.model(x, task_id=task_id)
        finally:
            for layer in self.layers.values():
                mask_of(layer).mask = None

    # ------------------------------------------------------------------ reports and state
    def capacity_report(self) -> dict[str, Any]:
        """Per backbone layer and overall: weights used by any task's supermask (the union)
        after every task, and the memory of the supermasks (one per task and layer: raw bits,
        bit-packed bytes, bytes after compression). Head masks are under ``heads``."""
        if self.bank.n_tasks == 0:
            return {}
        report = self.bank.report(self.layers)
        heads = [n for n in self.bank.layers if n.startswith("head.")]
        if heads:
            report["heads"] = self.bank.report(heads)["total"]
        return report

    def extra_metrics(self) -> dict[str, Any]:
        return {"capacity": self.capacity_report()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bank.load_state_dict(state["bank"])
        self._eval = None
        if self.mask_heads:
            for t in range(self.bank.n_tasks):
                name = f"head.{t}"
                if self.bank.has(t, name):
                    head = mask_of(self._head_layer(t))
                    head.mask = self.bank.get(t, name, device=head.scores.device).to(
                        head.scores.dtype
                    )
