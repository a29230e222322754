"""Structured (neuron / channel) ownership masks: the machinery of Eidetic Learning.

A *neuron* is one output row of a ``Linear`` layer or one output channel of a convolution.
Neurons that are the same tensor entries in the forward pass form a **group**: a plain layer is
its own group; the layers whose outputs are *added* (a residual block's last conv, its 1x1
shortcut conv, and, with an identity shortcut, the layer that produced the block input) share
one group, because a channel of the sum cannot belong to one task in one addend and to another
task in the other. BatchNorm layers are attached to the group they normalise.

Every group keeps, per neuron, the task that owns it (:data:`FREE` = nobody yet) and whether it
was pruned during the current task. From these two vectors everything follows:

* **persistence**: rows (incoming weights, bias, BN affine) of owned neurons never change
  (:class:`ParamGuard`, the shared :class:`~retain.core.freeze.Freezer` over neuron rows and
  columns, masks their gradients and restores their exact values after every optimiser step,
  so momentum, weight decay and AdamW cannot move them; :class:`BatchNormGuard` keeps their
  running statistics and makes them behave as in evaluation while later tasks train);
* **resistance**: when a task ends (:meth:`NeuronMasks.claim`), its surviving neurons become its
  own; the columns connecting them to neurons pruned during the task are already zero (pruning
  zeroes a neuron's row *and* its outgoing columns), and since those rows are frozen the
  synapses stay deleted. Columns from earlier tasks' neurons are kept (nested feature reuse);
* **recycling**: :meth:`NeuronMasks.recycle_` re-initialises every free neuron before a task.

The graph of groups is declared once with :class:`~retain.core.neuron_graph.NeuronGraph` or
derived by :func:`~retain.core.neuron_graph.trace` (``torch.fx``) for MLPs, plain CNNs and
ResNets (:mod:`retain.core.neuron_graph`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.core.freeze import Freezer
from retain.core.neuron_graph import CONV_LAYERS, NORM_LAYERS, LayerSpec, NeuronGraph, NormSpec

FREE = -1
"""Owner id of a neuron no task has claimed yet."""


# ====================================================================================== state
@dataclass
class _Layer:
    spec: LayerSpec
    module: nn.Module

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight  # type: ignore[return-value]

    @property
    def bias(self) -> nn.Parameter | None:
        return self.module.bias  # type: ignore[return-value]


@dataclass
class _Norm:
    spec: NormSpec
    module: nn.modules.batchnorm._BatchNorm


def _columns(mask: Tensor, expand: int) -> Tensor:
    """Input-feature indices of the neurons in ``mask`` (channel-major expansion)."""
    idx = mask.nonzero().flatten()
    if expand == 1:
        return idx
    return (idx.unsqueeze(1) * expand + torch.arange(expand, device=idx.device)).flatten()


class NeuronMasks:
    """Per-group ``owner`` (task id or :data:`FREE`) and ``pruned`` (during the current task)
    vectors of a module whose layers are described by ``graph``; resolves the layers in
    ``root`` and checks every size."""

    def __init__(self, graph: NeuronGraph, root: nn.Module) -> None:
        if graph.features is None:
            raise ValueError("the NeuronGraph has no output group (call graph.output(...))")
        self.graph = graph
        named = dict(root.named_modules())
        self.layers: list[_Layer] = []
        self.sizes: dict[str, int] = {}
        for spec in graph.layers:
            mod = named.get(spec.name)
            if not isinstance(mod, (nn.Linear, *CONV_LAYERS)):
                raise ValueError(f"{spec.name!r} is not a Linear/Conv module of the model")
            n_out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
            n_in = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
            if self.sizes.setdefault(spec.group, n_out) != n_out:
                raise ValueError(
                    f"{spec.name!r} has {n_out} outputs but group {spec.group!r} has "
                    f"{self.sizes[spec.group]}"
                )
            if spec.inputs is not None and self.sizes[spec.inputs] * spec.expand != n_in:
                raise ValueError(
                    f"{spec.name!r} has {n_in} inputs, not {self.sizes[spec.inputs]} neurons "
                    f"of {spec.inputs!r} x {spec.expand}"
                )
            self.layers.append(_Layer(spec, mod))
        self.norms: list[_Norm] = []
        for spec in graph.norms:
            mod = named.get(spec.name)
            if not isinstance(mod, NORM_LAYERS):
                raise ValueError(f"{spec.name!r} is not a BatchNorm module of the model")
            if mod.num_features != self.sizes[spec.group]:
                raise ValueError(f"norm {spec.name!r} does not match group {spec.group!r}")
            self.norms.append(_Norm(spec, mod))
        device = self.layers[0].weight.device
        self.owner = {
            g: torch.full((n,), FREE, dtype=torch.long, device=device)
            for g, n in self.sizes.items()
        }
        self.pruned = {
            g: torch.zeros(n, dtype=torch.bool, device=device) for g, n in self.sizes.items()
        }

    # -------------------------------------------------------------------------- queries
    @property
    def groups(self) -> list[str]:
        return list(self.sizes)

    @property
    def features(self) -> str:
        assert self.graph.features is not None
        return self.graph.features

    @property
    def n_neurons(self) -> int:
        return sum(self.sizes.values())

    def frozen(self, g: str) -> Tensor:
        """Neurons some earlier task owns."""
        return self.owner[g] != FREE

    def available(self, g: str) -> Tensor:
        """Neurons the current task may still prune: free and not pruned yet."""
        return (self.owner[g] == FREE) & ~self.pruned[g]

    def n_pruned(self) -> int:
        return int(sum(int(p.sum()) for p in self.pruned.values()))

    def pruned_fraction(self) -> float:
        """Fraction of all neurons pruned during the current task."""
        return self.n_pruned() / self.n_neurons

    # -------------------------------------------------------------------------- changes
    @torch.no_grad()
    def prune_(self, selection: dict[str, Tensor]) -> int:
        """Mark the neuron indices in ``selection`` (group -> indices) as pruned and zero
        their rows, BN affine and outgoing columns. Frozen neurons are refused."""
        n = 0
        for g, idx in selection.items():
            if idx.numel() == 0:
                continue
            if bool(self.frozen(g)[idx].any()):
                raise RuntimeError(f"refusing to prune neurons of group {g!r} owned by a task")
            self.pruned[g][idx] = True
            n += int(idx.numel())
        self.zero_pruned_()
        return n

    @torch.no_grad()
    def zero_pruned_(self) -> None:
        """Zero rows, biases and BN affine of pruned neurons and the columns reading them."""
        for layer in self.layers:
            s = layer.spec
            rows = self.pruned[s.group]
            layer.weight[rows] = 0
            if layer.bias is not None:
                layer.bias[rows] = 0
            if s.inputs is not None:
                cols = _columns(self.pruned[s.inputs], s.expand)
                layer.weight.index_fill_(1, cols, 0)
        for norm in self.norms:
            rows = self.pruned[norm.spec.group]
            if norm.module.weight is not None:
                norm.module.weight[rows] = 0
                norm.module.bias[rows] = 0

    def claim(self, task_id: int) -> dict[str, int]:
        """End a task: its free, unpruned neurons become its own; pruned ones become free.
        Returns the neurons claimed per group."""
        got = {}
        for g in self.groups:
            new = self.available(g)
            self.owner[g][new] = task_id
            self.pruned[g].zero_()
            got[g] = int(new.sum())
        return got

    @torch.no_grad()
    def recycle_(self) -> None:
        """Re-initialise every free neuron: PyTorch's default init of its layer's rows
        (Kaiming-uniform a=sqrt(5), bias U(+-1/sqrt(fan_in))), BN gamma 1, beta 0, running
        mean 0 and variance 1 (as the official code)."""
        for layer in self.layers:
            rows = self.owner[layer.spec.group] == FREE
            if not bool(rows.any()):
                continue
            w = layer.weight
            fresh = torch.empty_like(w)
            nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))
            w[rows] = fresh[rows]
            if layer.bias is not None:
                fan_in = w[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                b = torch.empty_like(layer.bias).uniform_(-bound, bound)
                layer.bias[rows] = b[rows]
        for norm in self.norms:
            rows = self.owner[norm.spec.group] == FREE
            m = norm.module
            if m.weight is not None:
                m.weight[rows] = 1
                m.bias[rows] = 0
            if m.running_mean is not None:
                m.running_mean[rows] = 0
                m.running_var[rows] = 1

    # -------------------------------------------------------------------------- reports
    def capacity(self, n_tasks: int, labels: dict[int, str] | None = None) -> dict[str, Any]:
        """Per group: size, neurons owned by each task ``0..n_tasks-1`` (plus labelled extra
        owners such as the router), pruned now, free."""
        labels = labels or {}
        rows = []
        tot_tasks = [0] * n_tasks
        tot_extra = dict.fromkeys(labels.values(), 0)
        for g in self.groups:
            own = self.owner[g]
            per = [int((own == t).sum()) for t in range(n_tasks)]
            extra = {name: int((own == t).sum()) for t, name in labels.items()}
            free = int((own == FREE).sum())
            rows.append(
                {
                    "group": g,
                    "layers": self.graph.members(g),
                    "size": self.sizes[g],
                    "per_task": per,
                    **extra,
                    "pruned_now": int(self.pruned[g].sum()),
                    "free": free,
                }
            )
            tot_tasks = [a + b for a, b in zip(tot_tasks, per)]
            for k, v in extra.items():
                tot_extra[k] += v
        total = {
            "size": self.n_neurons,
            "per_task": tot_tasks,
            **tot_extra,
            "free": sum(r["free"] for r in rows),
        }
        return {"groups": rows, "total": total}

    def weight_usage(self, n_phases: int) -> dict[str, Any]:
        """Weight-level capacity in the format of :func:`retain.core.masks.capacity_report`
        (comparable with PackNet / WSN): per layer, the weights a task uses (rows of owned
        neurons, columns from the network input or from neurons of the same or earlier
        tasks; deleted synapses are not counted), after each of the first ``n_phases``
        phases; the "mask" memory is one owner id per neuron, ``ceil(log2(n_phases + 1))``
        bits."""
        from retain.core.masks import LayerUsage, capacity_report

        bits = max(1, math.ceil(math.log2(n_phases + 1)))
        usage = {}
        for layer in self.layers:
            s = layer.spec
            w = layer.weight
            per_in = w[0, 0].numel()  # kernel positions per (row, column)
            out_own = self.owner[s.group]
            if s.inputs is None:
                cols = torch.full((w.shape[1],), FREE - 1, device=w.device)  # always usable
            else:
                cols = self.owner[s.inputs].repeat_interleave(s.expand)
            after = []
            for t in range(n_phases):
                rows = (out_own != FREE) & (out_own <= t)
                ok = (cols.unsqueeze(0) != FREE) & (cols.unsqueeze(0) <= out_own[rows, None])
                after.append(int(ok.sum()) * per_in)
            n_bits = self.sizes[s.group] * bits
            usage[s.name] = LayerUsage(
                weights=w.numel(),
                used=after[-1] if after else 0,
                used_after_task=after,
                mask_bits=n_bits,
                packed_bytes=math.ceil(n_bits / 8),
                encoded_bytes=math.ceil(n_bits / 8),
            )
        return capacity_report(usage)

    def check_resistance(self) -> list[str]:
        """Violations of the invariant 'an owned neuron reads only neurons of its own or
        earlier tasks' (non-zero weight from a free or later neuron). Empty when sound."""
        bad = []
        for layer in self.layers:
            s = layer.spec
            if s.inputs is None:
                continue
            out_own = self.owner[s.group]
            in_own = self.owner[s.inputs].repeat_interleave(s.expand)
            rows = out_own != FREE
            if not bool(rows.any()):
                continue
            w = layer.weight.detach()
            used = w.reshape(w.shape[0], w.shape[1], -1)[rows].ne(0).any(2)
            later = (in_own.unsqueeze(0) == FREE) | (in_own.unsqueeze(0) > out_own[rows, None])
            if bool((used & later).any()):
                bad.append(s.name)
        return bad

    # -------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "owner": {g: t.clone() for g, t in self.owner.items()},
            "pruned": {g: t.clone() for g, t in self.pruned.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for g in self.groups:
            self.owner[g].copy_(state["owner"][g])
            self.pruned[g].copy_(state["pruned"][g])


_REPORT_KEYS = ("group", "layers", "size", "per_task", "pruned_now", "free")


def format_capacity(report: dict[str, Any]) -> str:
    """A text table of :meth:`NeuronMasks.capacity`: neurons owned per task and free."""
    rows = report["groups"] + [{"group": "total", **report["total"]}]
    n_tasks = len(rows[0]["per_task"])
    extras = [k for k in report["groups"][0] if k not in _REPORT_KEYS]
    head = (
        f"{'group':<28} {'size':>6} "
        + " ".join(f"{'t' + str(t):>5}" for t in range(n_tasks))
        + "".join(f" {k:>6}" for k in extras)
        + f" {'free':>6} {'free%':>6}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['group'][:28]:<28} {r['size']:>6} "
            + " ".join(f"{c:>5}" for c in r["per_task"])
            + "".join(f" {r[k]:>6}" for k in extras)
            + f" {r['free']:>6} {100 * r['free'] / r['size']:>5.1f}%"
        )
    return "\n".join(lines)


# ====================================================================================== guards
class ParamGuard(Freezer):
    """Keeps owned neurons' parameters bit-exact and pruned ones zero around optimiser steps.

    The shared :class:`~retain.core.freeze.Freezer` (``mask_grads`` after ``backward``,
    ``restore`` after ``step``) with its holds derived from the :class:`NeuronMasks`: rows of
    owned neurons held at their values, rows of pruned neurons and the columns reading them
    held at zero. ``whole`` parameters (e.g. finished tasks' heads) are frozen entirely;
    ``readers`` are (parameter, group, expand) triples of layers outside the graph that read a
    group (the current head) and must not see its pruned neurons.
    """

    def __init__(self, masks: NeuronMasks) -> None:
        super().__init__()
        self.masks = masks

    @torch.no_grad()
    def refresh(
        self,
        whole: Iterable[nn.Parameter] = (),
        readers: Iterable[tuple[nn.Parameter, str, int]] = (),
        keep_saved: bool = False,
    ) -> None:
        """Recompute the holds from the masks; save frozen values unless ``keep_saved``
        (frozen values never change within a task, so re-saving after a prune is not
        needed)."""
        m = self.masks
        saved: dict[int, Tensor] = {}
        for h in self.holds if keep_saved else []:
            if h.dim == 0 and h.values is not None:
                saved.setdefault(id(h.param), h.values)
        self.clear()

        def add(p: nn.Parameter | None, group: str | None, inputs: str | None, expand: int):
            if p is None:
                return
            if group is not None:
                rows = m.frozen(group).nonzero().flatten()
                self.freeze_slices(p, rows, values=saved.get(id(p)))
                self.zero_slices(p, m.pruned[group].nonzero().flatten())
            if inputs is not None and p.dim() > 1:
                self.zero_slices(p, _columns(m.pruned[inputs], expand), dim=1)

        for layer in m.layers:
            s = layer.spec
            add(layer.weight, s.group, s.inputs, s.expand)
            add(layer.bias, s.group, None, 1)
        for norm in m.norms:
            add(norm.module.weight, norm.spec.group, None, 1)
            add(norm.module.bias, norm.spec.group, None, 1)
        for p, g, expand in readers:
            add(p, None, g, expand)
        for p in whole:
            rows = torch.arange(p.shape[0], device=p.device)
            self.freeze_slices(p, rows, values=saved.get(id(p)))


class BatchNormGuard:
    """Forward hooks that keep owned BN channels in evaluation behaviour during training.

    In training mode each guarded BatchNorm computes its usual output, then (i) writes back the
    saved running mean/variance of owned channels (so they never drift, not even by one
    momentum update) and (ii) replaces the owned channels' outputs by the evaluation-mode
    output with those statistics. Free channels train normally. ``num_batches_tracked`` is
    shared by all channels and still counts (it matters only with ``momentum=None``).
    """

    def __init__(self, masks: NeuronMasks) -> None:
        self.masks = masks
        self._handles: list[Any] = []
        self._state: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        for norm in masks.norms:
            if norm.module.track_running_stats:
                self._handles.append(norm.module.register_forward_hook(self._hook))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def refresh(self) -> None:
        """Save the owned channels' statistics (call when ownership changes)."""
        self._state = {}
        for norm in self.masks.norms:
            m = norm.module
            if not m.track_running_stats:
                continue
            frozen = self.masks.frozen(norm.spec.group)
            if not bool(frozen.any()):
                continue
            idx = frozen.nonzero().flatten()
            self._state[id(m)] = (
                frozen,
                idx,
                m.running_mean.detach().clone(),  # type: ignore[union-attr]
                m.running_var.detach().clone(),  # type: ignore[union-attr]
            )

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
        if not module.training:
            return None
        st = self._state.get(id(module))
        if st is None:
            return None
        frozen, idx, mean, var = st
        with torch.no_grad():
            # through ``.data``: the training-mode BN node saved the running buffers for its
            # backward (which does not read them in training mode); bumping their version
            # counter would make that backward fail
            module.running_mean.data.index_copy_(0, idx, mean[idx])  # type: ignore[union-attr]
            module.running_var.data.index_copy_(0, idx, var[idx])  # type: ignore[union-attr]
        x = args[0]
        y = F.batch_norm(
            x,
            mean,
            var,
            module.weight,
            module.bias,
            False,
            0.0,
            module.eps,  # type: ignore[arg-type]
        )
        shape = [1, -1] + [1] * (x.dim() - 2)
        return torch.where(frozen.view(shape), y, out)


# ====================================================================================== scores
def lp_scores(masks: NeuronMasks, p: float) -> dict[str, Tensor]:
    """Weight-magnitude score of every neuron: the ``p``-norm of its incoming weights over all
    layers of its group (``ln_structured`` over output rows)."""
    out = {}
    with torch.no_grad():
        for g in masks.groups:
            acc = torch.zeros(masks.sizes[g], dtype=torch.float64)
            for layer in masks.layers:
                if layer.spec.group == g:
                    w = layer.weight.detach().flatten(1).double()
                    acc += w.abs().pow(p).sum(1).cpu()  # the masks live on the CPU
            out[g] = acc.pow(1.0 / p)
    return out


def select_per_group(
    masks: NeuronMasks, scores: dict[str, Tensor], step: float, base: str = "unmasked"
) -> dict[str, Tensor]:
    """The lowest-scoring available neurons of every group, the same fraction in each.

    ``base="unmasked"`` (the official code, through ``torch.nn.utils.prune``): ``round(step x
    neurons not pruned in this task, owned ones included)``, clamped to the available neurons
    (the official code does not clamp and can select frozen rows). ``base="free"``:
    ``round(step x available neurons)``.
    """
    sel = {}
    for g in masks.groups:
        avail = masks.available(g)
        n_avail = int(avail.sum())
        n_base = int((~masks.pruned[g]).sum()) if base == "unmasked" else n_avail
        k = min(round(step * n_base), n_avail)
        if k <= 0:
            continue
        s = scores[g].double().masked_fill(~avail, math.inf)
        sel[g] = torch.topk(s, k, largest=False, sorted=True).indices
    return sel


def select_global(
    masks: NeuronMasks,
    scores: dict[str, Tensor],
    step: float,
    normalize: str = "global",
    constant_step: bool = False,
) -> dict[str, Tensor]:
    """Taylor selection: one threshold over all groups (Molchanov et al., 2017, as the code).

    Scores of unavailable neurons are +inf; finite scores are divided by their L2 norm, over all
    groups (``normalize="global"``, the official code: it does not change the ranking) or per
    group (``"layer"``, Molchanov's per-layer normalisation, which evens out the layers).
    ``k = floor(step x available)`` (or ``floor(step x all neurons)`` with ``constant_step``);
    every available neuron scoring at most the k-th lowest score is pruned. Nothing is
    selected when ``k`` is 0 or exceeds the available neurons.
    """
    groups = masks.groups
    normed = {}
    for g in groups:
        s = scores[g].double().clone()
        avail = masks.available(g)
        s[~avail] = math.inf
        if normalize == "layer":
            fin = s[avail]
            nrm = fin.norm()
            if nrm > 0:
                s[avail] = fin / nrm
        normed[g] = s
    flat = torch.cat([normed[g] for g in groups])
    fin = torch.isfinite(flat)
    if normalize == "global":
        nrm = flat[fin].norm()
        if nrm > 0:
            flat[fin] = flat[fin] / nrm
    remaining = int(fin.sum())
    k = math.floor(step * (masks.n_neurons if constant_step else remaining))
    if k <= 0 or k > remaining:
        return {}
    threshold = flat[fin].kthvalue(k).values
    chosen = fin & (flat <= threshold)
    sel, start = {}, 0
    for g in groups:
        n = masks.sizes[g]
        idx = chosen[start : start + n].nonzero().flatten()
        if idx.numel():
            sel[g] = idx
        start += n
    return sel


class TaylorScores:
    """Accumulates Molchanov's first-order Taylor score of every neuron: ``|activation x
    gradient|`` at the layer output, mean over the batch and the spatial positions, summed over
    batches (and over the layers of a group). The absolute value comes before the spatial mean,
    as in the official Eidetic code (Molchanov et al. 2017, Eq. 8, take it after); for MLPs
    the two agree. Kept on the CPU, beside the masks."""

    def __init__(self, masks: NeuronMasks) -> None:
        self.masks = masks
        self.raw = {g: torch.zeros(n, dtype=torch.float64) for g, n in masks.sizes.items()}

    def reset(self) -> None:
        for t in self.raw.values():
            t.zero_()

    @contextmanager
    def recording(self) -> Iterator[None]:
        handles = []

        def make_hook(group: str) -> Callable:
            def fwd(_mod: nn.Module, _args: Any, out: Tensor) -> None:
                if not out.requires_grad:
                    return
                act = out.detach()

                def bwd(grad: Tensor) -> None:
                    prod = (grad.detach() * act).abs()
                    if prod.dim() > 2:
                        prod = prod.flatten(2).mean(2)
                    self.raw[group] += prod.mean(0).double().cpu()

                out.register_hook(bwd)

            return fwd

        for layer in self.masks.layers:
            handles.append(layer.module.register_forward_hook(make_hook(layer.spec.group)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
