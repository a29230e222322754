"""HAT: hard attention to the task (Serra, Suris, Miron & Karatzoglou, ICML 2018)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.core.freeze import Freezer
from retain.core.masks import (
    LayerUsage,
    MaskBank,
    capacity_report,
    isolation_layers,
)
from retain.data.benchmark import Task
from retain.methods.base import Batch, Method, register


@register
class HAT(Method):
    """HAT: a learned, almost binary attention mask per task on every unit (task-aware).

    Serra, Suris, Miron & Karatzoglou, "Overcoming catastrophic forgetting with hard attention
    to the task", ICML 2018 (equation numbers of the arXiv/PMLR version). Every
    ``nn.Linear`` / ``nn.Conv2d`` layer ``l`` of the backbone has an embedding ``e_l^t`` per
    task, and its output units are gated by::

        a_l^t = sigmoid(s e_l^t)                                          (Eqs. 1-2)
        a^{<=t} = max(a^t, a^{<=t-1})                                     (Eq. 3)
        g'_{l,ij} = [1 - min(a^{<=t}_{l,i}, a^{<=t}_{l-1,j})] g_{l,ij}     (Eq. 4; bias: 1 - a_l)
        s = 1/s_max + (s_max - 1/s_max)(b - 1)/(B - 1), b = 1..B per epoch    (Eq. 5)
        q' = s_max [cosh(s e) + 1] / (s [cosh(e) + 1]) q                  (Eq. 6)
        L + c R,  R = sum a^t (1 - a^{<t}) / sum (1 - a^{<t})             (Eqs. 7-8)

    Inference uses ``s = s_max``; with ``binarize`` the stored masks are ``e > 0``, so every
    weight an old task uses is frozen exactly (BWT = 0). Each task has its own head.

    Args:
        smax: ``s_max`` (400 in the paper).
        c: weight of the sparsity regulariser (0.75 in the paper).
        thres_cosh: clamp of ``s e`` inside the cosh of Eq. 6 (official code: 50).
        thres_emb: clamp of the embeddings after every step (official code: 6).
        clip_grad: max gradient norm (official code: 10000; None: no clipping).
        binarize: store binary inference masks (default; False: the paper's real-valued
            ``sigmoid(s_max e)``, which leaves a little forgetting).

    Deviations and choices: docs/methods/hat.md
    """

    name = "hat"
    task_agnostic = False
    shared_forward = False

    def __init__(
        self,
        smax: float = 400.0,
        c: float = 0.75,
        thres_cosh: float = 50.0,
        thres_emb: float = 6.0,
        clip_grad: float | None = 10000.0,
        binarize: bool = True,
    ) -> None:
        super().__init__(loss_heads="task")
        if smax < 1:
            raise ValueError(f"smax must be >= 1, got {smax}")
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.smax, self.c = float(smax), float(c)
        self.thres_cosh, self.thres_emb = float(thres_cosh), float(thres_emb)
        self.clip_grad = clip_grad
        self.binarize = binarize
        self.layers: dict[str, nn.Module] = {}
        self.units: list[int] = []
        self.expand: list[int] = []  # how often each unit of layer l-1 feeds layer l
        self.emb: list[list[nn.Parameter]] = []  # [task][layer]
        self.task_masks: list[list[Tensor]] = []  # stored inference masks [task][layer]
        self.a_cum: list[Tensor] = []
        self.freezer = Freezer()
        self._grad_masks: list[tuple[Tensor, Tensor | None]] = []
        self._gates: list[Tensor] | None = None
        self._params: list[nn.Parameter] = []

    # ------------------------------------------------------------------ setup
    def setup(self, model, info) -> None:
        super().setup(model, info)
        self.layers = isolation_layers(model, self.name, "gate")
        self.units, self.expand = [], []
        for i, (name, layer) in enumerate(self.layers.items()):
            out_units, in_dim = layer.weight.shape[0], layer.weight.shape[1]
            if i > 0:
                prev = self.units[-1]
                if in_dim % prev:
                    raise ValueError(
                        f"hat needs a chain of layers: {name!r} has {in_dim} inputs, not a "
                        f"multiple of the previous layer's {prev} units"
                    )
                self.expand.append(in_dim // prev)
            else:
                self.expand.append(0)
            self.units.append(out_units)
            layer.register_forward_hook(self._hook(i))
        device = next(model.parameters()).device
        n_tasks = info.n_tasks if info is not None else len(model.classes_per_task)
        self.emb = [
            [nn.Parameter(torch.randn(u, device=device)) for u in self.units]
            for _ in range(n_tasks)
        ]
        self.a_cum = [torch.zeros(u, device=device) for u in self.units]
        self.task_masks = []

    def _hook(self, i: int):
        def gate(module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
            if self._gates is None:
                return None
            g = self._gates[i]
            return output * g.view(1, -1, *([1] * (output.dim() - 2)))

        return gate

    # ------------------------------------------------------------------ attention
    def attention(self, task_id: int, s: float) -> list[Tensor]:
        """``sigmoid(s * e_l^t)`` for every layer (Eq. 2)."""
        return [torch.sigmoid(s * e) for e in self.emb[task_id]]

    def inference_masks(self, task_id: int) -> list[Tensor]:
        """The masks task ``task_id`` is evaluated with: the stored ones once it is learned,
        else those of its current embeddings at ``s_max``."""
        if task_id < len(self.task_masks):
            return self.task_masks[task_id]
        with torch.no_grad():
            a = self.attention(task_id, self.smax)
        return [(x > 0.5).to(x.dtype) for x in a] if self.binarize else a

    def anneal(self, batch_index: int, n_batches: int) -> float:
        """Eq. 5 with ``b = batch_index + 1``, ``B = n_batches``: the ``s`` of a training
        batch is ``anneal(batch.index, batch.of)`` (used by :meth:`loss` and
        :meth:`after_backward`)."""
        if n_batches <= 1:
            return self.smax
        return 1 / self.smax + (self.smax - 1 / self.smax) * batch_index / (n_batches - 1)

    def regulariser(self, masks: list[Tensor]) -> Tensor:
        """``R(A^t, A^{<t})`` of Eqs. 7-8: attention on units not used by earlier tasks,
        normalised by the number of such units."""
        num = sum((m * (1 - a)).sum() for m, a in zip(masks, self.a_cum, strict=True))
        den = sum((1 - a).sum() for a in self.a_cum)
        return num / max(float(den), 1.0)

    # ------------------------------------------------------------------ training
    def _weight_grad_mask(self, i: int, weight: Tensor) -> tuple[Tensor, Tensor]:
        """``1 - min(a_post, a_pre)`` of Eq. 4 for layer ``i``'s weight, ``1 - a_post`` for
        its bias."""
        extra = [1] * (weight.dim() - 2)
        post = self.a_cum[i].view(-1, 1, *extra)
        if i == 0:
            w = (1 - post).expand_as(weight)
        else:
            pre = self.a_cum[i - 1].repeat_interleave(self.expand[i]).view(1, -1, *extra)
            w = (1 - torch.minimum(post, pre)).expand_as(weight)
        return w.contiguous(), 1 - self.a_cum[i]

    def _prepare(self) -> None:
        self.freezer.clear()
        self._grad_masks = []
        if self.current_task <= 0:
            return
        for i, layer in enumerate(self.layers.values()):
            wmask, bmask = self._weight_grad_mask(i, layer.weight)
            self._grad_masks.append((wmask, bmask if layer.bias is not None else None))
            self.freezer.freeze(layer.weight, wmask == 0)
            if layer.bias is not None:
                self.freezer.freeze(layer.bias, bmask == 0)

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self._prepare()

    def resume_task(self, task: Task) -> None:
        super().resume_task(task)
        self._prepare()

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        assert self.model is not None
        self._params = (
            list(self.model.backbone.parameters())
            + self.model.head_parameters([task.id])
            + list(self.emb[task.id])
        )
        return self._params

    def loss(self, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        if batch.task is None:
            raise ValueError("hat trains on one task's batches (batch.task must be set)")
        masks = self.attention(task.id, self.anneal(batch.index, batch.of))
        self._gates = masks
        try:
            logits = self.model(batch.x, task_id=task.id)
        finally:
            self._gates = None
        return F.cross_entropy(logits, batch.y) + self.c * self.regulariser(masks)

    @torch.no_grad()
    def after_backward(self, batch: Batch, task: Task) -> None:
        for (wmask, bmask), layer in zip(self._grad_masks, self.layers.values(), strict=False):
            if layer.weight.grad is not None:
                layer.weight.grad.mul_(wmask)
            if bmask is not None and layer.bias.grad is not None:
                layer.bias.grad.mul_(bmask)
        t, s = self.current_task, self.anneal(batch.index, batch.of)
        for e in self.emb[t]:
            if e.grad is not None:
                num = torch.cosh((s * e).clamp(-self.thres_cosh, self.thres_cosh)) + 1
                den = torch.cosh(e) + 1
                e.grad.mul_(self.smax / s * num / den)
        if self.clip_grad is not None:
            params = self._params or list(self.emb[t])  # (a loop of one's own)
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)

    @torch.no_grad()
    def after_step(self, batch: Batch, task: Task) -> None:
        for e in self.emb[self.current_task]:
            e.clamp_(-self.thres_emb, self.thres_emb)
        self.freezer.restore()

    @torch.no_grad()
    def after_task(self, task: Task) -> None:
        masks = self.attention(task.id, self.smax)
        if self.binarize:
            masks = [(m > 0.5).to(m.dtype) for m in masks]
        masks = [m.detach().clone() for m in masks]
        while len(self.task_masks) < task.id:  # tasks skipped by a custom loop
            self.task_masks.append(self.inference_masks(len(self.task_masks)))
        self.task_masks.append(masks)
        self.a_cum = [torch.maximum(a, m) for a, m in zip(self.a_cum, masks, strict=True)]
        self.freezer.clear()
        self._grad_masks = []

    # ------------------------------------------------------------------ inference
    def forward_task(self, x: Tensor, task_id: int) -> Tensor:
        """Task-aware logits of ``task_id`` with its inference masks and head."""
        assert self.model is not None
        self._gates = self.inference_masks(task_id)
        try:
            return self.model(x, task_id=task_id)
        finally:
            self._gates = None

    # ------------------------------------------------------------------ reports and state
    def capacity_report(self) -> dict[str, Any]:
        """Per backbone layer and overall: weights used by the learned tasks (those Eq. 4
        freezes: both end units attended, ``a^{<=t} > 0.5`` for real-valued masks) and free,
        after every task; units used per layer; and the memory of the stored masks (one bit
        per unit and task when binarised, else a 32-bit float per unit and task)."""
        if not self.task_masks:
            return {}
        bank = MaskBank()
        for t, masks in enumerate(self.task_masks):
            bank.add(t, {n: (m > 0.5) for n, m in zip(self.layers, masks, strict=True)})
        n_tasks = len(self.task_masks)
        usage: dict[str, LayerUsage] = {}
        units: dict[str, Any] = {}
        cum = [torch.zeros_like(a) for a in self.a_cum]
        history: list[list[int]] = [[] for _ in self.layers]
        unit_hist: list[list[int]] = [[] for _ in self.layers]
        for t in range(n_tasks):
            cum = [torch.maximum(c, m) for c, m in zip(cum, self.task_masks[t], strict=True)]
            for i, layer in enumerate(self.layers.values()):
                history[i].append(self._used_weights(cum, i, layer.weight))
                unit_hist[i].append(int((cum[i] > 0.5).sum()))
        for i, name in enumerate(self.layers):
            u = bank.usage(name)
            n_units = self.units[i]
            weight = self.layers[name].weight
            u.weights, u.used, u.used_after_task = weight.numel(), history[i][-1], history[i]
            if not self.binarize:
                u.mask_bits = 32 * n_units * n_tasks
                u.packed_bytes = u.encoded_bytes = 4 * n_units * n_tasks
            usage[name] = u
            units[name] = {
                "units": n_units,
                "used": unit_hist[i][-1],
                "used_frac_after_task": [round(v / n_units, 6) for v in unit_hist[i]],
            }
        report = capacity_report(usage)
        report["units"] = units
        return report

    def _used_weights(self, cum: list[Tensor], i: int, weight: Tensor) -> int:
        post = cum[i] > 0.5
        if i == 0:
            return int(post.sum()) * (weight.numel() // self.units[0])
        pre = (cum[i - 1] > 0.5).repeat_interleave(self.expand[i])
        per_pair = weight.numel() // (weight.shape[0] * weight.shape[1])  # kernel size
        return int(post.sum()) * int(pre.sum()) * per_pair

    def extra_metrics(self) -> dict[str, Any]:
        return {"capacity": self.capacity_report()}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "emb": [[e.detach().cpu().clone() for e in row] for row in self.emb],
            "task_masks": [[m.cpu() for m in row] for row in self.task_masks],
            "a_cum": [a.cpu() for a in self.a_cum],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            for row, saved in zip(self.emb, state["emb"], strict=True):
                for e, v in zip(row, saved, strict=True):
                    e.copy_(v)
        device = self.a_cum[0].device if self.a_cum else "cpu"
        self.task_masks = [[m.to(device) for m in row] for row in state["task_masks"]]
        self.a_cum = [a.to(device) for a in state["a_cum"]]
