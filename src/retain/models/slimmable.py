"""Slimmable layers (Yu et al., "Slimmable Neural Networks", ICLR 2019) and ScrollNet's scroll.

A slimmable layer holds one full-size weight; at *width* ``k`` of ``K`` (``splits``) it uses only
the first ``k/K`` of its output channels and the first ``k/K`` of its input channels, so the
``K`` sub-networks are nested: width 1 is the first channel group of every layer, width ``K``
the whole network. BatchNorm is *switchable*: every width has its own private BN over its
``k/K`` channels (the statistics of a narrow sub-network differ from the full one's).

The *scroll* (ScrollNet, Yang et al., ICCV-W 2023, Sec. 3.2) rotates the channel groups: with a
scroll of ``s`` groups, position ``i`` of a layer reads stored channel ``(i + s * C/K) mod C``
(the official code's default direction), for output and input channels alike. After a scroll
by one group, the group that was first (the most important one, used by every width) is last
(used only at full width). BatchNorm is not scrolled: the BN of width ``k`` always normalises
positions ``0 .. C_k - 1``, whatever channels are scrolled into them (paper, Sec. 4.1).

Design
------
* **A converter, not one class per architecture.** :func:`make_slimmable` swaps, in place, the
  ``nn.Linear``/``nn.Conv2d``/``nn.BatchNorm*`` modules of *any* model (our MLP, AlexNet,
  ResNet-18, a user's own network) for their slimmable versions; the model's own ``forward``
  is unchanged. So there is one implementation of each architecture, the slimmable MLP,
  AlexNet and ResNet-18 are ``make_slimmable(MLP(...), K)`` etc., and the conversion happens
  where the method interface says layers are swapped: ``ScrollNet.setup``. The linear and
  conv layers keep their parameter objects and names (``weight``, ``bias``), so
  optimisers, penalties and checkpoints see the same parameters.
* **Rotation on the fly, parameters never move.** The scroll is an integer per layer; the
  forward takes the active rows/columns of the stored weight (a view when the selected
  groups are contiguous, one concatenation when they wrap around). Every per-parameter state
  a wrapped method keeps (EWC's Fisher and anchor, SI's path integral, MAS's importance, a
  mask) stays aligned with the stored weights, whatever the scroll, with no method knowing
  about scrolling. An in-place permutation would make the hot loop free of the gather but
  would have to permute all such state too, which a wrapper cannot do in general. The gather
  costs one copy of a layer's weight per forward (small next to the matmul/conv with a batch).
* **Explicit shared state, no globals.** Width and scroll are attributes of each layer, set for
  a whole model by :func:`width` (a context manager) / :func:`set_width` and
  :func:`set_scroll` / :func:`scroll`. The scroll is saved in the model's ``state_dict``
  (``_extra_state`` of each layer), so a reloaded or deep-copied model computes the same
  function. Models with different ``K`` coexist in one process.

* **Heads are left alone.** The backbone of a :class:`~retain.models.ContinualModel` returns
  its features in the full, unscrolled layout with zeros in the inactive groups
  (:class:`FullOutput`, a forward hook). For a linear head that is exactly ScrollNet's
  slimmable head (input sliced and scrolled, output not), and every other head works too:
  LUCIR's cosine heads, which that method installs in its own ``setup`` after the
  conversion, BiC's corrected outputs, iCaRL's class means of features, a user's head.

Which dimensions are sliced: every output and input channel dimension, except the input of
the layer(s) reading the raw input (default: the first Linear/Conv2d in module order) and the
outputs named in ``fixed_output`` (a plain module's classifier). A linear layer after a
flatten (AlexNet's ``fc1``) slices its input in groups of ``in_features / K``, which are exactly
the flattened channel groups of the conv before it (channel-major flatten), so scrolling the
conv's channels and the linear's inputs by one group stay consistent.

Every sliced dimension must be divisible by ``K`` (equal splits; the official code silently
assumes them). Other normalisation layers (LayerNorm, GroupNorm, ...) and other layers with
parameters are refused rather than silently mis-sliced.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FullOutput",
    "SlimmableConv2d",
    "SlimmableLinear",
    "SwitchableBatchNorm",
    "get_scroll",
    "get_splits",
    "is_slimmable",
    "make_slimmable",
    "scroll",
    "set_scroll",
    "set_width",
    "slimmable_modules",
    "width",
]


def _take(t: Tensor, dim: int, size: int, splits: int, k: int, shift: int) -> Tensor:
    """Positions ``0 .. k*size/K - 1`` of dimension ``dim`` of ``t`` after a scroll of ``shift``
    groups: position ``i`` is stored index ``(i + shift * size/K) mod size``."""
    group = size // splits
    start = (shift % splits) * group
    n = k * group
    if start == 0 and n == size:
        return t
    if start + n <= size:
        return t.narrow(dim, start, n)
    return torch.cat((t.narrow(dim, start, size - start), t.narrow(dim, 0, start + n - size)), dim)


def _check_splits(splits: int) -> int:
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    return splits


class _Scrolled:
    """Width and scroll of one module; the scroll is saved in the ``state_dict``."""

    splits: int
    width: int
    shift: int

    def _init_scroll(self, splits: int) -> None:
        self.splits = _check_splits(splits)
        self.width = splits  # active width k in 1..K (K: the full layer)
        self.shift = 0  # scroll in groups, 0..K-1

    # the scroll is part of the function: save it with the parameters
    def get_extra_state(self) -> dict[str, int]:
        return {"shift": self.shift}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.shift = int(state["shift"]) % self.splits


class _Sliced(_Scrolled):
    """Width/scroll bookkeeping shared by the slimmable linear and conv layers."""

    slice_in: bool
    slice_out: bool

    def _init_slim(
        self, n_in: int, n_out: int, splits: int, slice_in: bool, slice_out: bool
    ) -> None:
        self._init_scroll(splits)
        for flag, n, what in ((slice_in, n_in, "inputs"), (slice_out, n_out, "outputs")):
            if flag and n % splits:
                raise ValueError(
                    f"{type(self).__name__}: {n} {what} cannot be split into {splits} equal groups"
                )
        self.slice_in = slice_in
        self.slice_out = slice_out

    def _active(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        k, s, K = self.width, self.shift, self.splits
        if self.slice_out:
            weight = _take(weight, 0, weight.shape[0], K, k, s)
            if bias is not None:
                bias = _take(bias, 0, bias.shape[0], K, k, s)
        if self.slice_in:
            weight = _take(weight, 1, weight.shape[1], K, k, s)
        return weight, bias

    def _slim_repr(self) -> str:
        return f"splits={self.splits}, slice_in={self.slice_in}, slice_out={self.slice_out}"


class SlimmableLinear(_Sliced, nn.Linear):
    """``nn.Linear`` whose active part is the first ``width/splits`` of its outputs and inputs
    (after the scroll). ``slice_in=False`` for a layer reading the raw input,
    ``slice_out=False`` for a classifier head.

    Attributes:
        width: active width ``k`` (1..splits); set it with :func:`width`.
        shift: scroll in channel groups; set it with :func:`set_scroll`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        splits: int = 4,
        slice_in: bool = True,
        slice_out: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._init_slim(in_features, out_features, splits, slice_in, slice_out)

    @classmethod
    def from_linear(cls, m: nn.Linear, splits: int, slice_in: bool, slice_out: bool):
        """A slimmable layer that shares ``m``'s parameter objects."""
        new = cls(
            m.in_features,
            m.out_features,
            m.bias is not None,
            splits,
            slice_in,
            slice_out,
            device="meta",
        )
        new.weight = m.weight
        new.bias = m.bias
        new.train(m.training)
        return new

    def active_parameters(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias the current width and scroll use."""
        return self._active(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self._active(self.weight, self.bias)
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._slim_repr()}"


class SlimmableConv2d(_Sliced, nn.Conv2d):
    """``nn.Conv2d`` (``groups=1``) whose active part is the first ``width/splits`` of its
    output and input channels (after the scroll). See :class:`SlimmableLinear`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        splits: int = 4,
        slice_in: bool = True,
        slice_out: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        nn.Conv2d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=1,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._init_slim(in_channels, out_channels, splits, slice_in, slice_out)

    @classmethod
    def from_conv(cls, m: nn.Conv2d, splits: int, slice_in: bool, slice_out: bool):
        """A slimmable layer that shares ``m``'s parameter objects (``m.groups`` must be 1)."""
        if m.groups != 1:
            raise ValueError("grouped/depthwise convolutions cannot be made slimmable")
        new = cls(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
            splits=splits,
            slice_in=slice_in,
            slice_out=slice_out,
            device="meta",
        )
        new.weight = m.weight
        new.bias = m.bias
        new.train(m.training)
        return new

    def active_parameters(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias the current width and scroll use."""
        return self._active(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self._active(self.weight, self.bias)
        return self._conv_forward(x, w, b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._slim_repr()}"


class SwitchableBatchNorm(nn.Module):
    """One private BatchNorm per width (Yu et al., 2019): width ``k`` uses ``bns[k - 1]``, a BN
    over ``k * num_features / splits`` channels. Not scrolled (ScrollNet, Sec. 4.1).

    Args:
        num_features: channels at full width.
        splits: K.
        dims: 1 (``BatchNorm1d``) or 2 (``BatchNorm2d``).
        eps, momentum, affine, track_running_stats: as the BatchNorm of every width.
    """

    def __init__(
        self,
        num_features: int,
        splits: int = 4,
        dims: int = 2,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        _check_splits(splits)
        if num_features % splits:
            raise ValueError(
                f"SwitchableBatchNorm: {num_features} channels cannot be split into "
                f"{splits} equal groups"
            )
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims}")
        cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.num_features = num_features
        self.splits = splits
        self.width = splits
        self.bns = nn.ModuleList(
            cls(num_features * k // splits, eps, momentum, affine, track_running_stats)
            for k in range(1, splits + 1)
        )

    @classmethod
    def from_batch_norm(cls, m: nn.modules.batchnorm._BatchNorm, splits: int):
        """Switchable BN whose every width starts from the first channels of ``m``'s state."""
        dims = 2 if isinstance(m, nn.BatchNorm2d) else 1
        new = cls(m.num_features, splits, dims, m.eps, m.momentum, m.affine, m.track_running_stats)
        with torch.no_grad():
            for bn in new.bns:
                n = bn.num_features
                for name in ("weight", "bias", "running_mean", "running_var"):
                    src, dst = getattr(m, name), getattr(bn, name)
                    if src is not None and dst is not None:
                        dst.copy_(src[:n])
                if m.num_batches_tracked is not None and bn.num_batches_tracked is not None:
                    bn.num_batches_tracked.copy_(m.num_batches_tracked)
        floats = [t for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]
        floats = [t for t in floats if t.is_floating_point()]
        if floats:
            new.to(device=floats[0].device, dtype=floats[0].dtype)
        new.train(m.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self.bns[self.width - 1](x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, splits={self.splits}"


class FullOutput(_Scrolled, nn.Module):
    """Returns a slimmed module's output in its full, unscrolled layout.

    At width ``k`` with scroll ``s`` the module's output has the ``k/K`` active channels
    (dimension 1) in scrolled order; this puts position ``i`` back at stored channel
    ``(i + s * C/K) mod C`` and zeros in the inactive channels. A classifier on top then needs
    no slicing: a linear head ``W`` gives exactly ``W[:, active] @ features`` (ScrollNet's
    slimmable head, its input sliced and scrolled), and any other head (LUCIR's cosine head, a
    user's module) sees features of one fixed size whose channels never move. Registered as
    a forward hook of the module by :func:`make_slimmable` (``full_output=True``).
    """

    def __init__(self, num_features: int, splits: int) -> None:
        nn.Module.__init__(self)
        self._init_scroll(splits)
        if num_features % splits:
            raise ValueError(
                f"{num_features} output features cannot be split into {splits} equal groups"
            )
        self.num_features = num_features

    def forward(self, h: Tensor) -> Tensor:
        C, K = self.num_features, self.splits
        n = h.shape[1]
        if n != C * self.width // K:
            raise ValueError(
                f"expected {C * self.width // K} features at width {self.width}, got {n}"
            )
        if n < C:
            h = torch.cat((h, h.new_zeros((h.shape[0], C - n, *h.shape[2:]))), 1)
        if self.shift:
            h = h.roll(self.shift * (C // K), 1)
        return h

    def hook(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        return self(output)

    def extra_repr(self) -> str:
        return f"{self.num_features}, splits={self.splits}"


SLIMMABLE_TYPES = (SlimmableLinear, SlimmableConv2d, SwitchableBatchNorm, FullOutput)
_REFUSED = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.batchnorm._BatchNorm,  # other BN flavours (SyncBatchNorm, BatchNorm3d, lazy)
    nn.Embedding,
)


def _is_continual_model(model: nn.Module) -> bool:
    return isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(
        getattr(model, "heads", None), nn.ModuleList
    )


def make_slimmable(
    model: nn.Module,
    splits: int,
    fixed_input: Sequence[str] | None = None,
    fixed_output: Sequence[str] = (),
    full_output: bool | None = None,
) -> nn.Module:
    """Make ``model`` slimmable with ``splits`` nested widths, in place; returns ``model``.

    ``nn.Linear`` and ``nn.Conv2d`` become :class:`SlimmableLinear` / :class:`SlimmableConv2d`
    (sharing their parameter objects, so names and optimiser/penalty references stay valid),
    ``nn.BatchNorm1d/2d`` become :class:`SwitchableBatchNorm` (every width starting from the
    original BN's first channels).

    A :class:`~retain.models.ContinualModel` (anything with a ``backbone`` module and a
    ``heads`` ``ModuleList``): its backbone is converted with ``full_output=True`` and the
    heads are left as they are: they receive the backbone's features in the full, unscrolled
    layout with zeros in the inactive groups (:class:`FullOutput`), which for a linear head is
    exactly a head whose input is sliced and scrolled and whose output is not. Any head type
    works (LUCIR's cosine heads, heads a method installs later). Layer names in
    ``fixed_input``/``fixed_output`` are then relative to the backbone.

    Args:
        model: a ContinualModel, or any module (then every layer is converted).
        splits: K, the number of nested sub-networks (ScrollNet-2, ScrollNet-4).
        fixed_input: names of the layers whose input is not sliced (they read the raw
            input). Default: the first Linear/Conv2d in ``named_modules()`` order (MLP
            ``layers.0``, AlexNet ``c1``, ResNet ``conv1``).
        fixed_output: names of the layers whose output is not sliced (classifiers of a
            plain module).
        full_output: return the converted module's output (dimension 1) in the full,
            unscrolled layout (see :class:`FullOutput`); needs an integer attribute
            ``out_features``. Default: True for a ContinualModel's backbone, else False.

    Raises:
        ValueError: a sliced dimension not divisible by ``splits``, a grouped conv, an
            unsupported layer with parameters (LayerNorm, GroupNorm, Embedding, ...), a model
            that is already slimmable or that has nothing to slice.
    """
    _check_splits(splits)
    if is_slimmable(model):
        raise ValueError("the model is already slimmable")
    if _is_continual_model(model):
        make_slimmable(
            model.backbone,
            splits,
            fixed_input,
            fixed_output,
            True if full_output is None else full_output,
        )
        return model

    layers = [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    if fixed_input is None:
        fixed_input = layers[:1]
    fixed_in, fixed_out = set(fixed_input), set(fixed_output)
    unknown = sorted((fixed_in | fixed_out) - set(layers))
    if unknown:
        raise ValueError(f"no such Linear/Conv2d layer(s) in the model: {', '.join(unknown)}")

    replace: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        sliced = (name not in fixed_in, name not in fixed_out)
        if type(m) is nn.Linear:
            replace.append((name, SlimmableLinear.from_linear(m, splits, *sliced)))
        elif type(m) is nn.Conv2d:
            replace.append((name, SlimmableConv2d.from_conv(m, splits, *sliced)))
        elif type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            replace.append((name, SwitchableBatchNorm.from_batch_norm(m, splits)))
        elif isinstance(m, _REFUSED) or any(True for _ in m.parameters(recurse=False)):
            raise ValueError(
                f"cannot make {name or 'the model'} ({type(m).__name__}) slimmable; supported: "
                "Linear, Conv2d, BatchNorm1d/2d and parameter-free modules"
            )
    if not any(isinstance(new, _Sliced) and (new.slice_in or new.slice_out) for _, new in replace):
        raise ValueError("the model has no channel dimension to slice")
    if any(name == "" for name, _ in replace):
        raise ValueError("pass a container, not a single layer, to make_slimmable")
    out = None
    if full_output:
        n_out = getattr(model, "out_features", None)
        if not isinstance(n_out, int):
            raise ValueError("full_output needs the module's integer attribute out_features")
        out = FullOutput(n_out, splits)
    for name, new in replace:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    if out is not None:
        # a submodule, so the scroll is saved with the model; an nn.Sequential runs every
        # submodule in order, so there it is the last layer, elsewhere a forward hook
        model.slim_output = out
        if not isinstance(model, nn.Sequential):
            model.register_forward_hook(out.hook)
    return model


# ---------------------------------------------------------------------------- width and scroll
def slimmable_modules(model: nn.Module) -> list[nn.Module]:
    """The slimmable layers and switchable BNs of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, SLIMMABLE_TYPES)]


def _modules(target: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
    if isinstance(target, nn.Module):
        return slimmable_modules(target)
    return list(target)


def is_slimmable(model: nn.Module) -> bool:
    return any(isinstance(m, SLIMMABLE_TYPES) for m in model.modules())


def get_splits(model: nn.Module) -> int | None:
    """K of a slimmable model (None if it is not slimmable)."""
    ks = {m.splits for m in slimmable_modules(model)}
    if len(ks) > 1:
        raise ValueError(f"the model mixes slimmable layers with different splits: {sorted(ks)}")
    return ks.pop() if ks else None


def set_width(target: nn.Module | Iterable[nn.Module], k: int) -> None:
    """Make width ``k`` (1..K) active in a model (or a list from :func:`slimmable_modules`)."""
    for m in _modules(target):
        if not 1 <= k <= m.splits:
            raise ValueError(f"width must be in 1..{m.splits}, got {k}")
        m.width = k


@contextmanager
def width(target: nn.Module | Iterable[nn.Module], k: int) -> Iterator[None]:
    """``with width(model, k):`` run the sub-network of the first ``k`` of ``K`` channel groups;
    the previous widths are restored on exit (also after an exception)."""
    mods = _modules(target)
    previous = [m.width for m in mods]
    set_width(mods, k)
    try:
        yield
    finally:
        for m, w in zip(mods, previous):
            m.width = w


def set_scroll(target: nn.Module | Iterable[nn.Module], shift: int) -> None:
    """Scroll every slimmable layer to ``shift`` groups (taken modulo K): position ``i`` reads
    stored channel ``(i + shift * C/K) mod C``. Switchable BNs are not scrolled."""
    for m in _modules(target):
        if isinstance(m, _Scrolled):
            m.shift = int(shift) % m.splits


def get_scroll(model: nn.Module) -> int:
    """The scroll (in groups) of a slimmable model."""
    shifts = {m.shift for m in slimmable_modules(model) if isinstance(m, _Scrolled)}
    if len(shifts) != 1:
        raise ValueError(f"expected one scroll for the whole model, got {sorted(shifts)}")
    return shifts.pop()


def scroll(target: nn.Module | Iterable[nn.Module], steps: int = 1) -> None:
    """Scroll by ``steps`` more groups: after ``scroll(model)`` the group that was first (the
    most important, in every sub-network) is last (used only at full width)."""
    for m in _modules(target):
        if isinstance(m, _Scrolled):
            m.shift = (m.shift + int(steps)) % m.splits
