"""Binary weight masks: the one mask module of retain (PackNet, HAT, SupSup, WSN, Eidetic).

What is here, from storage to the forward pass:

* **Bit-packing** (:func:`pack_bits`, :func:`unpack_bits`, :class:`PackedMask`): 8 mask
  positions per byte, the same layout as ``numpy.packbits`` (most significant bit first), with
  union / intersection / complement directly on the packed bytes and a popcount.
* **Lossless compression** (:func:`encode_mask`, :func:`decode_mask`, built on
  :mod:`retain.core.mask_coding`): Huffman over 8-bit symbols or over run lengths, whichever is
  shorter, optionally coding a mask only *inside* a region known to contain it (a PackNet task
  mask inside the weights that were free before it), or *given* a region the decoder knows,
  inside and outside it as two streams with their own codes (a WSN task mask given the union
  ``M_{t-1}`` of the earlier tasks: reused weights inside, newly claimed ones outside).
* **A bank of per-task masks** (:class:`MaskBank`) and the **capacity report**
  (:func:`capacity_report`): per layer and overall, weights used / free after every task, and the
  memory the masks take: raw bits, bytes bit-packed, bytes after compression (real encoded byte
  strings, headers and code tables included), and CAP as WSN defines it.
* **Forward-time masking** of ``nn.Linear`` / ``nn.Conv2d`` weights with
  ``torch.nn.utils.parametrize`` (:class:`WeightMask`: ``weight * mask``; :class:`ScoreMask`:
  ``weight * top-k(|scores|)`` with a straight-through gradient to the scores, for SupSup and
  WSN). The top-k threshold is one selection per layer per forward (:func:`kth_largest`: a
  radix pass on the float bits plus ``kthvalue`` on one bucket), never per-element Python.

Freezing the weights a mask protects is :class:`retain.core.freeze.Freezer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from retain.core.mask_coding import decode_bits, encode_bits

MASKABLE = (nn.Linear, nn.Conv2d)
FLOAT_BITS = 32  # bits of one dense weight, the unit of CAP

_SHIFTS = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


# ================================================================================== packing
def pack_bits(mask: Tensor) -> Tensor:
    """Flatten a boolean (or 0/1) tensor and pack it 8 positions per byte (uint8, MSB first,
    zero padding at the end): ``ceil(numel / 8)`` bytes, same layout as ``numpy.packbits``."""
    flat = mask.reshape(-1).to(torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    groups = flat.view(-1, 8).to(torch.uint8)
    return (groups << _SHIFTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` positions as a flat bool tensor."""
    bits = (packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 1
    return bits.reshape(-1)[:numel].to(torch.bool)


def popcount(packed: Tensor) -> int:
    """Number of set bits in a packed uint8 tensor."""
    return int(_POPCOUNT.to(packed.device)[packed.long()].sum())


@dataclass
class PackedMask:
    """A boolean mask of any shape stored 1 bit per position."""

    data: Tensor  # uint8, ceil(numel / 8) bytes
    shape: tuple[int, ...]

    @classmethod
    def from_tensor(cls, mask: Tensor) -> PackedMask:
        return cls(pack_bits(mask.detach()), tuple(mask.shape))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def to_tensor(self, device: torch.device | str | None = None) -> Tensor:
        data = self.data if device is None else self.data.to(device)
        return unpack_bits(data, self.numel).view(self.shape)

    def count(self) -> int:
        return popcount(self.data)

    def _check(self, other: PackedMask) -> None:
        if self.shape != other.shape:
            raise ValueError(f"mask shapes differ: {self.shape} vs {other.shape}")

    def __or__(self, other: PackedMask) -> PackedMask:
        self._check(other)
        return PackedMask(self.data | other.data, self.shape)

    def __and__(self, other: PackedMask) -> PackedMask:
        self._check(other)
        return PackedMask(self.data & other.data, self.shape)

    def __invert__(self) -> PackedMask:
        data = ~self.data
        pad = (-self.numel) % 8
        if pad and data.numel():
            data = data.clone()
            data[-1] &= (0xFF << pad) & 0xFF  # keep the padding bits at zero
        return PackedMask(data, self.shape)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PackedMask)
            and self.shape == other.shape
            and torch.equal(self.data.cpu(), other.data.cpu())
        )

    def state(self) -> dict[str, Any]:
        return {"data": self.data.cpu(), "shape": list(self.shape)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PackedMask:
        return cls(state["data"], tuple(state["shape"]))


# ================================================================================== coding
def encode_mask(mask: Tensor, within: Tensor | None = None, given: Tensor | None = None) -> bytes:
    """Losslessly code a boolean mask (see :mod:`retain.core.mask_coding`).

    With ``within`` (same shape), only the positions inside ``within`` are coded: the mask must
    lie inside it (a ValueError otherwise), and the decoder needs the same ``within``. Use it
    when the decoder already knows a superset of the mask (PackNet: the weights free before the
    task), so those positions cost nothing.

    With ``given`` (same shape, any region the decoder knows), the (coded) positions inside
    and outside ``given`` are coded as two separate streams, each with its own code, so each
    part is coded at its own density: a WSN task mask ``m_t`` given the union ``M_{t-1}`` of
    the earlier tasks' masks costs ``H(reuse density)`` per weight of ``M_{t-1}`` plus ``H(new
    density)`` per free weight, and the decoder also learns ``M_t = M_{t-1} | m_t``.
    Format: the byte length of the inside stream (4 bytes, little-endian), the inside stream,
    the outside one.
    """
    mask = mask.detach().to(torch.bool).cpu()
    bits = mask.reshape(-1)
    if within is not None:
        within = within.detach().to(torch.bool).cpu()
        if within.shape != mask.shape:
            raise ValueError(f"within has shape {tuple(within.shape)}, mask {tuple(mask.shape)}")
        if bool((mask & ~within).any()):
            raise ValueError("the mask has positions outside `within`")
        bits = mask[within]
    if given is None:
        return encode_bits(bits.numpy())
    inside = _given_positions(given, mask.shape, within)
    first = encode_bits(bits[inside].numpy())
    return len(first).to_bytes(4, "little") + first + encode_bits(bits[~inside].numpy())


def _given_positions(given: Tensor, shape: Sequence[int], within: Tensor | None) -> Tensor:
    """``given`` at the coded positions (all positions, or those inside ``within``), flat."""
    given = given.detach().to(torch.bool).cpu()
    if tuple(given.shape) != tuple(shape):
        raise ValueError(f"given has shape {tuple(given.shape)}, mask {tuple(shape)}")
    return given.reshape(-1) if within is None else given[within]


def decode_mask(
    data: bytes,
    shape: Sequence[int] | None = None,
    within: Tensor | None = None,
    given: Tensor | None = None,
) -> Tensor:
    """Inverse of :func:`encode_mask`: give the ``shape`` (no ``within``) or the ``within``
    used when encoding, and the same ``given`` if one was used. Returns a CPU bool tensor."""
    if given is None:
        bits = torch.from_numpy(decode_bits(data).copy())
    else:
        full = tuple(within.shape) if within is not None else shape
        if full is None:
            raise ValueError("decoding with `given` needs the shape or `within`")
        inside = _given_positions(given, full, within)
        if len(data) < 4:
            raise ValueError("truncated mask code (stream length)")
        n_first = int.from_bytes(data[:4], "little")
        first = torch.from_numpy(decode_bits(data[4 : 4 + n_first]).copy())
        second = torch.from_numpy(decode_bits(data[4 + n_first :]).copy())
        if first.numel() != int(inside.sum()) or second.numel() != int((~inside).sum()):
            raise ValueError("the code does not match `given` (different number of positions)")
        bits = torch.empty(inside.numel(), dtype=torch.bool)
        bits[inside] = first
        bits[~inside] = second
    if within is None:
        if shape is None:
            return bits
        return bits.view(tuple(shape))
    within = within.detach().to(torch.bool).cpu()
    if bits.numel() != int(within.sum()):
        raise ValueError("the code does not match `within` (different number of positions)")
    out = torch.zeros(within.shape, dtype=torch.bool)
    out[within] = bits
    return out


# ================================================================================== capacity
@dataclass
class LayerUsage:
    """Numbers behind one layer's line of a capacity report."""

    weights: int
    used: int  # positions used by any task after the last task
    used_after_task: list[int] = field(default_factory=list)
    mask_bits: int = 0  # one bit per stored mask position (raw)
    packed_bytes: int = 0  # the stored masks, bit-packed
    encoded_bytes: int = 0  # the stored masks, entropy-coded (real byte strings)


def _frac(a: float, b: float) -> float:
    return round(a / b, 6) if b else 0.0


def capacity_report(layers: Mapping[str, LayerUsage]) -> dict[str, Any]:
    """Per-layer and overall capacity: a JSON-friendly dict.

    ``layers[name]`` and ``total`` hold ``weights``, ``used``, ``free``, ``used_frac``,
    ``used_frac_after_task`` (one value per trained task), ``mask_bits``, ``mask_bytes_packed``,
    ``mask_bytes_encoded``. ``total`` also holds ``cap`` and ``cap_raw``: CAP as in WSN (Kang et
    al., ICML 2022, Sec. 5), the memory of the used weights plus all task masks as a fraction
    of the dense weights, ``(used + mask_bits / 32) / weights`` with the masks counted as
    encoded (``cap``) or as 1 bit per position (``cap_raw``).
    """
    out: dict[str, Any] = {"layers": {}}
    n_hist = max((len(u.used_after_task) for u in layers.values()), default=0)
    tot = LayerUsage(0, 0, [0] * n_hist)
    for name, u in layers.items():
        out["layers"][name] = _usage_dict(u)
        tot.weights += u.weights
        tot.used += u.used
        for i, v in enumerate(u.used_after_task):
            tot.used_after_task[i] += v
        tot.mask_bits += u.mask_bits
        tot.packed_bytes += u.packed_bytes
        tot.encoded_bytes += u.encoded_bytes
    total = _usage_dict(tot)
    total["cap"] = _frac(tot.used + 8 * tot.encoded_bytes / FLOAT_BITS, tot.weights)
    total["cap_raw"] = _frac(tot.used + tot.mask_bits / FLOAT_BITS, tot.weights)
    out["total"] = total
    return out


def _usage_dict(u: LayerUsage) -> dict[str, Any]:
    return {
        "weights": u.weights,
        "used": u.used,
        "free": u.weights - u.used,
        "used_frac": _frac(u.used, u.weights),
        "used_frac_after_task": [_frac(v, u.weights) for v in u.used_after_task],
        "mask_bits": u.mask_bits,
        "mask_bytes_packed": u.packed_bytes,
        "mask_bytes_encoded": u.encoded_bytes,
    }


class MaskBank:
    """Binary masks per (task, layer), kept bit-packed, with their compressed codes.

    Any subset of layers may be stored for a task (a per-task head's mask exists for its own
    task only). Masks live on the CPU; :meth:`get` and :meth:`union` move them where asked.

    Args:
        encode: also compute the entropy-coded byte string of every mask when it is added
            (what the capacity report counts; the strings are kept, so they are real).
    """

    def __init__(self, encode: bool = True) -> None:
        self.encode = encode
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._masks: dict[str, dict[int, PackedMask]] = {}
        self._codes: dict[str, dict[int, bytes]] = {}

    # ---------------------------------------------------------------- storing
    def add(
        self,
        task: int,
        masks: Mapping[str, Tensor],
        within: Mapping[str, Tensor] | None = None,
        given: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Store task ``task``'s masks (bool tensors by layer name). ``within[name]``, if
        given, is a region known to contain the mask; only positions inside it are coded.
        ``given[name]``, if given, is a region the decoder knows: the positions inside and
        outside it are coded as two streams (see :func:`encode_mask`)."""
        for name, mask in masks.items():
            shape = tuple(mask.shape)
            if self.shapes.setdefault(name, shape) != shape:
                raise ValueError(f"layer {name!r}: mask shape {shape} != {self.shapes[name]}")
            m = mask.detach().to(torch.bool).cpu()
            self._masks.setdefault(name, {})[task] = PackedMask.from_tensor(m)
            if self.encode:
                region = None if within is None else within.get(name)
                known = None if given is None else given.get(name)
                self._codes.setdefault(name, {})[task] = encode_mask(m, region, known)

    # ---------------------------------------------------------------- reading
    @property
    def layers(self) -> list[str]:
        return list(self._masks)

    @property
    def n_tasks(self) -> int:
        """One more than the largest task stored (0 when empty)."""
        return 1 + max((t for d in self._masks.values() for t in d), default=-1)

    def tasks(self, name: str) -> list[int]:
        return sorted(self._masks.get(name, {}))

    def has(self, task: int, name: str) -> bool:
        return task in self._masks.get(name, {})

    def packed(self, task: int, name: str) -> PackedMask:
        return self._masks[name][task]

    def code(self, task: int, name: str) -> bytes:
        return self._codes[name][task]

    def get(self, task: int, name: str, device: torch.device | str | None = None) -> Tensor:
        return self._masks[name][task].to_tensor(device)

    def union_packed(self, name: str, tasks: Iterable[int] | None = None) -> PackedMask:
        """OR of the masks of ``tasks`` (default: all stored) of one layer, still packed."""
        stored = self._masks[name]
        chosen = sorted(stored) if tasks is None else [t for t in tasks if t in stored]
        out = PackedMask(torch.zeros_like(next(iter(stored.values())).data), self.shapes[name])
        for t in chosen:
            out = out | stored[t]
        return out

    def union(
        self,
        name: str,
        tasks: Iterable[int] | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """OR of the masks of ``tasks`` (default: all) as a bool tensor of the layer's shape;
        all False when none is stored."""
        if name not in self._masks:
            raise KeyError(name)
        return self.union_packed(name, tasks).to_tensor(device)

    # ---------------------------------------------------------------- report
    def usage(self, name: str, used: int | None = None) -> LayerUsage:
        """:class:`LayerUsage` of one layer: ``used`` defaults to the union of all tasks."""
        shape = self.shapes[name]
        tasks = self.tasks(name)
        acc = PackedMask(torch.zeros_like(self._masks[name][tasks[0]].data), shape)
        history = []
        for t in range(self.n_tasks):
            if t in self._masks[name]:
                acc = acc | self._masks[name][t]
            history.append(acc.count())
        return LayerUsage(
            weights=math.prod(shape),
            used=acc.count() if used is None else used,
            used_after_task=history,
            mask_bits=math.prod(shape) * len(tasks),
            packed_bytes=sum(m.nbytes for m in self._masks[name].values()),
            encoded_bytes=sum(len(c) for c in self._codes.get(name, {}).values()),
        )

    def report(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """:func:`capacity_report` of the stored layers (default: all), union as 'used'."""
        names = self.layers if names is None else list(names)
        return capacity_report({n: self.usage(n) for n in names})

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "encode": self.encode,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "masks": {n: {t: m.state() for t, m in d.items()} for n, d in self._masks.items()},
            "codes": {n: dict(d) for n, d in self._codes.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.encode = state["encode"]
        self.shapes = {k: tuple(v) for k, v in state["shapes"].items()}
        self._masks = {
            n: {int(t): PackedMask.from_state(m) for t, m in d.items()}
            for n, d in state["masks"].items()
        }
        self._codes = {n: {int(t): c for t, c in d.items()} for n, d in state["codes"].items()}


# ================================================================================== layers
def masked_layers(module: nn.Module, types: tuple[type, ...] = MASKABLE) -> dict[str, nn.Module]:
    """The ``nn.Linear`` / ``nn.Conv2d`` layers inside ``module`` by qualified name, in
    registration order (for the built-in backbones: the order of the forward pass)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, types)}


def isolation_layers(model: nn.Module, method: str, verb: str) -> dict[str, nn.Module]:
    """What every parameter-isolation method (HAT, PackNet, SupSup, WSN) checks in ``setup``,
    then its layers: one head per task, no normalisation that later tasks would change
    (:func:`check_no_stateful_norm`), and at least one layer to ``verb`` (mask, gate, prune)."""
    if model.shared_head:
        raise ValueError(f"{method} needs one head per task (head='task')")
    check_no_stateful_norm(model.backbone, method)
    layers = masked_layers(model.backbone)
    if not layers:
        raise ValueError(f"{method}: the backbone has no nn.Linear or nn.Conv2d layer to {verb}")
    return layers


def check_no_stateful_norm(module: nn.Module, method: str) -> None:
    """Masked methods keep old tasks exact by fixing weights; a normalisation layer with
    learnable affine parameters or running statistics would drift under later tasks. Raise
    a ValueError naming it (statistics-free BatchNorm, as in WSN, is allowed)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
            stats = getattr(m, "track_running_stats", False)
            if affine or stats:
                raise ValueError(
                    f"{method}: normalisation layer {name!r} has learnable parameters or running "
                    "statistics, which later tasks would change; use a backbone without it or "
                    "with statistics-free BatchNorm (batch_norm='stats_free')"
                )


def raw_weight(layer: nn.Module) -> nn.Parameter:
    """The stored weight parameter of a layer, under a parametrization or not."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def fan_in(weight: Tensor) -> int:
    """Inputs per output unit: ``in_features`` or ``in_channels * kh * kw``."""
    return math.prod(weight.shape[1:])


class WeightMask(nn.Module):
    """Parametrization ``weight -> weight * mask`` (``mask=None``: the weight unchanged).

    Register it with :func:`attach`; set ``mask`` (a tensor broadcastable to the weight, best
    in the weight's dtype) for a forward pass and back to ``None`` after it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: Tensor | None = None

    def forward(self, weight: Tensor) -> Tensor:
        return weight if self.mask is None else weight * self.mask


class _StraightThroughTopK(torch.autograd.Function):
    """Forward: 0/1 mask of the ``k`` largest entries of a *non-negative* tensor (``|s|``).
    Backward: the gradient unchanged (straight-through estimator, Ramanujan et al., CVPR 2020,
    "edge-popup", Sec. 3)."""

    @staticmethod
    def forward(ctx, scores: Tensor, k: int) -> Tensor:
        return topk_mask(scores.detach(), k, nonneg=True).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def supermask(scores: Tensor, density: float) -> Tensor:
    """``1[|s| among the top density fraction]`` as floats, with gradient ``sign(s) * g``
    to the scores (the straight-through estimator through ``|s|``)."""
    return _StraightThroughTopK.apply(scores.abs(), density_count(scores.numel(), density))


class ScoreMask(WeightMask):
    """Parametrization ``weight -> weight * top-k(|scores|)``: a learned supermask (SupSup,
    WSN). ``scores`` is a parameter of the weight's shape; the top-``density`` fraction of
    ``|scores|`` (exactly ``round(density * numel)`` entries) is kept in every forward, with a
    straight-through gradient to the scores. Setting ``mask`` overrides the scores (e.g. a
    stored task mask at inference).
    """

    def __init__(self, shape: Sequence[int], density: float) -> None:
        super().__init__()
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        self.density = float(density)
        self.scores = nn.Parameter(torch.empty(tuple(shape)))
        self.reset_scores()

    def reset_scores(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform scores (``a=sqrt(5)``, PyTorch's layer default, as edge-popup)."""
        bound = 1.0 / math.sqrt(fan_in(self.scores))  # = gain(a=sqrt 5) * sqrt(3 / fan_in)
        with torch.no_grad():
            self.scores.uniform_(-bound, bound, generator=generator)

    def current_mask(self) -> Tensor:
        """The boolean mask the scores select now."""
        k = density_count(self.scores.numel(), self.density)
        return topk_mask(self.scores.detach().abs(), k, nonneg=True)

    def forward(self, weight: Tensor) -> Tensor:
        if self.mask is not None:
            return weight * self.mask
        return weight * supermask(self.scores, self.density)


def attach(layer: nn.Module, mask: WeightMask) -> WeightMask:
    """Register ``mask`` as the parametrization of ``layer.weight``; return it. A layer gets
    one mask: a second one (a method set up twice on one model) is a ValueError."""
    if parametrize.is_parametrized(layer, "weight") and any(
        isinstance(p, WeightMask) for p in layer.parametrizations.weight
    ):
        raise ValueError("this layer already has a weight mask (was the method set up twice?)")
    parametrize.register_parametrization(layer, "weight", mask)
    return mask


def mask_of(layer: nn.Module) -> WeightMask:
    """The :class:`WeightMask` attached to ``layer`` by :func:`attach`."""
    for p in layer.parametrizations.weight:
        if isinstance(p, WeightMask):
            return p
    raise ValueError("layer has no WeightMask parametrization")


# ================================================================================== top-k
def density_count(numel: int, density: float) -> int:
    """Entries kept at ``density``: ``round(density * numel)``, at least 1 when density > 0."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    k = round(density * numel)
    return max(k, 1) if density > 0 and numel > 0 else k


_RADIX_MIN = 1 << 16


def kth_largest(x: Tensor, k: int, nonneg: bool = False) -> Tensor:
    """The ``k``-th largest entry of ``x`` (a 0-d tensor), ``1 <= k <= numel``.

    For large non-negative float32 tensors (|scores|, |weights|): one radix pass on the top 16
    bits of the IEEE representation (monotone for non-negative floats) finds the bucket that
    holds the answer, then ``kthvalue`` runs on that bucket only; about 2-3x faster than a
    ``kthvalue`` over the whole tensor on CPU. Otherwise plain ``kthvalue``. ``nonneg=True``
    promises ``x >= 0`` with no ``-0.0`` (e.g. the output of ``abs()``) and skips checking.
    """
    return _select(x, k, nonneg)[0]


def _select(x: Tensor, k: int, nonneg: bool) -> tuple[Tensor, int | None]:
    """(k-th largest value, number of entries >= it when known without a full pass)."""
    flat = x.detach().reshape(-1)
    n = flat.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if flat.dtype != torch.float32 or n < _RADIX_MIN or (not nonneg and bool(flat.min() < 0)):
        return flat.kthvalue(n - k + 1).values, None
    bits = flat.view(torch.int32)
    hi = bits >> 16 if nonneg else (bits & 0x7FFFFFFF) >> 16  # -0.0 -> +0.0
    counts = torch.bincount(hi, minlength=1 << 15)
    at_or_above = counts.flip(0).cumsum(0).flip(0)  # entries with bucket >= b
    b = int((at_or_above >= k).sum()) - 1
    above = int(at_or_above[b + 1]) if b + 1 < len(at_or_above) else 0
    bucket = flat[hi == b]
    value = bucket.kthvalue(bucket.numel() - (k - above) + 1).values
    return value, above + int((bucket >= value).sum())


def topk_mask(x: Tensor, k: int, nonneg: bool = False) -> Tensor:
    """Boolean mask of exactly ``k`` largest entries of ``x`` (ties broken by ``topk``).
    ``nonneg``: as in :func:`kth_largest`."""
    n = x.numel()
    if k <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(x, dtype=torch.bool)
    value, n_ge = _select(x, k, nonneg)
    mask = x >= value
    if (int(mask.sum()) if n_ge is None else n_ge) != k:  # ties: exact selection
        flat = torch.zeros(n, dtype=torch.bool, device=x.device)
        flat[x.reshape(-1).topk(k, sorted=False).indices] = True
        mask = flat.view(x.shape)
    return mask
