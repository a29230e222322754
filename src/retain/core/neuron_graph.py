"""The neuron graph of a backbone: which layers' output neurons are the same tensor entries.

A *neuron* is one output row of a ``Linear`` layer or one output channel of a convolution.
Layers whose outputs are *added* (a residual block's last conv, its 1x1 shortcut conv, and,
with an identity shortcut, the layer that produced the block input) form one **group**;
BatchNorm layers are attached to the group they normalise. :class:`NeuronGraph` declares the
groups, the order of the forward pass and which group feeds which layer; :func:`trace` derives
it with ``torch.fx`` for MLPs, plain CNNs and ResNets. Eidetic Learning's ownership masks
(:mod:`retain.core.structured`) are built over it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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
            if isinstance(mod, (nn.Linear, *CONV_LAYERS)):
                if name in used:
                    raise TraceError(f"layer {name!r} is called twice (weight sharing)")
                used.add(name)
                if isinstance(mod, CONV_LAYERS) and mod.groups != 1:
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
            elif isinstance(mod, NORM_LAYERS):
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
