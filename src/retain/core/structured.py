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

The graph of groups is declared once with :class:`NeuronGraph` or derived by :func:`trace`
(``torch.fx``) for MLPs, plain CNNs and ResNets.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.core.freeze import Freezer

FREE = -1
"""Owner id of a neuron no task has claimed yet."""

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ====================================================================================== graph
@dataclass
class LayerSpec:
    """One ``Linear``/``Conv`` layer: its output neurons join ``group``; its inputs are the
    neurons of ``inputs`` (``None``: the network input, never masked). ``expand`` input
    features belong to each input neuron (a conv channel flattened over ``expand`` positions,
    channel-major as ``torch.flatten`` lays it out)."""

    name: str
    group: str
    inputs: str | None = None
    expand: int = 1


@dataclass
class NormSpec:
    """A BatchNorm layer normalising the neurons of ``group``."""

    name: str
    group: str


@dataclass
class NeuronGraph:
    """Which layers produce which neurons, and which neurons each layer reads.

    Declare it once for your own model (names are module paths inside the traced module, as in
    ``named_modules()``)::

        g = NeuronGraph()
        g.layer("fc1")                       # reads the network input
        g.norm("bn1", "fc1")
        g.layer("fc2", inputs="fc1")
        g.output("fc2")                      # the heads read these neurons

    A residual block ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` whose input
    neurons are the group ``"stem"``::

        g.layer("b.conv1", inputs="stem").norm("b.bn1", "b.conv1")
        g.layer("b.conv2", inputs="b.conv1", group="b.conv2").norm("b.bn2", "b.conv2")
        g.layer("b.short", inputs="stem", group="b.conv2")   # 1x1 projection: same output group
        # identity shortcut instead: g.layer("b.conv2", inputs="b.conv1", group="stem")

    or let :func:`trace` derive all of this.
    """

    layers: list[LayerSpec] = field(default_factory=list)
    norms: list[NormSpec] = field(default_factory=list)
    features: str | None = None
    features_expand: int = 1

    def layer(
        self, name: str, inputs: str | None = None, group: str | None = None, expand: int = 1
    ) -> NeuronGraph:
        """Add a layer; its output neurons join ``group`` (default: a new group ``name``)."""
        if any(s.name == name for s in self.layers):
            raise ValueError(f"layer {name!r} declared twice")
        if inputs is not None and inputs not in self.groups:
            raise ValueError(f"layer {name!r} reads group {inputs!r}, which is not declared yet")
        if expand < 1:
            raise ValueError(f"expand must be >= 1, got {expand}")
        self.layers.append(LayerSpec(name, group or name, inputs, int(expand)))
        return self

    def norm(self, name: str, group: str) -> NeuronGraph:
        """Attach the BatchNorm ``name`` to the neurons of ``group``."""
        if group not in self.groups:
            raise ValueError(f"norm {name!r} normalises unknown group {group!r}")
        self.norms.append(NormSpec(name, group))
        return self

    def output(self, group: str, expand: int = 1) -> NeuronGraph:
        """The heads read the neurons of ``group`` (``expand`` features per neuron)."""
        if group not in self.groups:
            raise ValueError(f"unknown output group {group!r}")
        self.features, self.features_expand = group, int(expand)
        return self

    @property
    def groups(self) -> list[str]:
        """Group names in order of first appearance."""
        return list(dict.fromkeys(s.group for s in self.layers))

    def members(self, group: str) -> list[str]:
        """The layers whose outputs are the neurons of ``group``."""
        return [s.name for s in self.layers if s.group == group]

    def describe(self) -> str:
        lines = []
        for g in self.groups:
            readers = [s.name for s in self.layers if s.inputs == g]
            if self.features == g:
                readers.append("<heads>")
            norms = [n.name for n in self.norms if n.group == g]
            lines.append(
                f"{g}: layers {', '.join(self.members(g))}"
                + (f"; norms {', '.join(norms)}" if norms else "")
                + f"; read by {', '.join(readers) or 'nothing'}"
            )
        return "\n".join(lines)


# ====================================================================================== trace
_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
)
_PASS_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    torch.flatten,
    torch.squeeze,
}
_PASS_METHODS = {
    "relu",
    "relu_",
    "tanh",
    "sigmoid",
    "flatten",
    "view",
    "reshape",
    "contiguous",
    "clone",
    "squeeze",
}
_REDUCE_METHODS = {"mean", "amax", "sum"}
_ADD = {operator.add, operator.iadd, torch.add}
_SCALE = {operator.mul, operator.truediv, operator.imul, torch.mul}


class TraceError(ValueError):
    """The module does something :func:`trace` cannot map to neuron groups; declare a
    :class:`NeuronGraph` by hand instead."""


def trace(module: nn.Module) -> NeuronGraph:
    """Derive the :class:`NeuronGraph` of ``module`` by symbolic tracing (``torch.fx``).

    Supported: ``Linear`` and ``Conv1d/2d/3d`` (``groups=1``), BatchNorm, element-wise
    activations, dropout, pooling, flatten/view, reductions over spatial dimensions, addition
    of two tensors (which merges their groups: residual connections) and multiplication by
    constants. Anything that mixes channels otherwise (concatenation, attention, LayerNorm,
    grouped convs) raises :class:`TraceError`.

    Flattening a conv output before a ``Linear`` is recognised from the sizes: the ``Linear``'s
    ``in_features`` must be a multiple of the channel count (channel-major order).
    """
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(module)
    except Exception as e:  # pragma: no cover - depends on the user's module
        raise TraceError(f"torch.fx cannot trace {type(module).__name__}: {e}") from e
    modules = dict(gm.named_modules())
    parent: dict[str, str] = {}  # union-find over group names

    def find(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    value: dict[fx.Node, str | None] = {}  # node -> group of its channels (None: input)
    tensor_nodes: set[fx.Node] = set()
    layers: list[LayerSpec] = []
    norms: list[NormSpec] = []
    sizes: dict[str, int] = {}
    used: set[str] = set()
    features: str | None = None

    def group_of(arg: Any) -> str | None:
        if not isinstance(arg, fx.Node) or arg not in tensor_nodes:
            raise TraceError(f"expected a tensor argument, got {arg!r}")
        g = value[arg]
        return None if g is None else find(g)

    def tensor_args(node: fx.Node) -> list[fx.Node]:
        return [a for a in node.args if isinstance(a, fx.Node) and a in tensor_nodes]

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            value[node] = None
            tensor_nodes.add(node)
        elif node.op == "call_module":
            mod = modules[node.target]
            name = str(node.target)
            if isinstance(mod, (nn.Linear, *_CONV)):
                if name in used:
                    raise TraceError(f"layer {name!r} is called twice (weight sharing)")
                used.add(name)
                if isinstance(mod, _CONV) and mod.groups != 1:
                    raise TraceError(f"grouped convolution {name!r} is not supported")
                src = group_of(node.args[0])
                n_out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
                n_in = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
                expand = 1
                if src is not None:
                    if n_in % sizes[src]:
                        raise TraceError(
                            f"{name!r} has {n_in} inputs, not a multiple of the "
                            f"{sizes[src]} neurons of {src!r}"
                        )
                    expand = n_in // sizes[src]
                    if expand != 1 and not isinstance(mod, nn.Linear):
                        raise TraceError(f"{name!r}: input channels do not match {src!r}")
                layers.append(LayerSpec(name, name, src, expand))
                sizes[name] = n_out
                value[node] = name
            elif isinstance(mod, _NORM):
                g = group_of(node.args[0])
                if g is None:
                    raise TraceError(f"norm {name!r} normalises the network input")
                norms.append(NormSpec(name, g))
                value[node] = g
            elif isinstance(mod, _PASS_MODULES):
                value[node] = group_of(node.args[0])
            elif not any(True for _ in mod.parameters()) and isinstance(mod, nn.Sequential):
                value[node] = group_of(node.args[0])  # pragma: no cover - fx inlines these
            else:
                raise TraceError(
                    f"module {name!r} ({type(mod).__name__}) is not supported by trace(); "
                    "declare a NeuronGraph"
                )
            tensor_nodes.add(node)
        elif node.op == "call_function":
            fn = node.target
            targs = tensor_args(node)
            if fn in _ADD:
                if len(targs) == 1:  # tensor + constant
                    value[node] = group_of(targs[0])
                else:
                    a, b = (group_of(t) for t in targs[:2])
                    if a is None or b is None:
                        raise TraceError("adding the network input to a hidden tensor")
                    if sizes[a] != sizes[b]:
                        raise TraceError(f"adding groups of sizes {sizes[a]} and {sizes[b]}")
                    if a != b:
                        keep, drop = sorted((a, b), key=lambda g: list(sizes).index(g))
                        parent[drop] = keep
                    value[node] = find(a)
            elif fn in _SCALE:
                if len(targs) != 1:
                    raise TraceError("multiplying two hidden tensors is not supported")
                value[node] = group_of(targs[0])
            elif fn in _PASS_FUNCTIONS:
                value[node] = group_of(node.args[0])
            elif fn is operator.getitem and node.args[0] not in tensor_nodes:
                continue  # e.g. x.size()[0]
            else:
                raise TraceError(f"function {getattr(fn, '__name__', fn)} is not supported")
            tensor_nodes.add(node)
        elif node.op == "call_method":
            m = node.target
            if m == "size" or m == "dim":
                continue
            if m in ("add", "add_"):
                targs = tensor_args(node)
                if len(targs) == 2:
                    a, b = (group_of(t) for t in targs)
                    if a is None or b is None or sizes[a] != sizes[b]:
                        raise TraceError("unsupported addition")
                    if a != b:
                        keep, drop = sorted((a, b), key=lambda g: list(sizes).index(g))
                        parent[drop] = keep
                value[node] = group_of(targs[0])
            elif m in _PASS_METHODS:
                value[node] = group_of(node.args[0])
            elif m in _REDUCE_METHODS:
                dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
                dims = (dims,) if isinstance(dims, int) else dims
                if dims is None or 1 in dims or 0 in dims:
                    raise TraceError(f".{m}() over the channel or batch dimension")
                value[node] = group_of(node.args[0])
            else:
                raise TraceError(f"method .{m}() is not supported")
            tensor_nodes.add(node)
        elif node.op == "output":
            out = node.args[0]
            if isinstance(out, (tuple, list)):
                raise TraceError("the traced module must return one tensor")
            features = group_of(out)
            if features is None:
                raise TraceError("the output does not depend on any layer")
        elif node.op == "get_attr":
            raise TraceError(f"direct use of the tensor attribute {node.target!r}")

    graph = NeuronGraph()
    for spec in layers:
        graph.layers.append(
            LayerSpec(
                spec.name,
                find(spec.group),
                None if spec.inputs is None else find(spec.inputs),
                spec.expand,
            )
        )
    graph.norms = [NormSpec(n.name, find(n.group)) for n in norms]
    if features is None:
        raise TraceError("the traced module has no output")
    graph.features = find(features)
    return graph


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
            if not isinstance(mod, (nn.Linear, *_CONV)):
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
            if not isinstance(mod, _NORM):
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
