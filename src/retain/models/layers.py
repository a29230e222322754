"""Small pieces shared by the backbones: input-shape checks and the BatchNorm variants."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

BATCH_NORM_KINDS = ("affine", "stats_free")
"""``"affine"``: ordinary BatchNorm (learnable gamma/beta, running statistics).
``"stats_free"``: BatchNorm without affine parameters and without running statistics, as in
WSN (Kang et al., ICML 2022): it normalises with the statistics of the current batch in training
*and* in evaluation, so it has nothing that old tasks could forget, but test outputs depend on the
test batch."""


def as_shape(input_shape: int | Sequence[int]) -> tuple[int, ...]:
    """``input_shape`` (an int, tuple or list, e.g. from YAML) as a tuple of positive ints."""
    shape = (
        (int(input_shape),) if isinstance(input_shape, int) else tuple(int(d) for d in input_shape)
    )
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"input_shape must be non-empty positive sizes, got {input_shape!r}")
    return shape


def image_shape(input_shape: int | Sequence[int], model: str) -> tuple[int, int, int]:
    """``input_shape`` as ``(channels, height, width)``; anything else is a ValueError."""
    shape = as_shape(input_shape)
    if len(shape) != 3:
        raise ValueError(f"{model} needs an image input_shape (C, H, W), got {tuple(shape)}")
    return shape[0], shape[1], shape[2]


def batch_norm(kind: str, num_features: int, dims: int) -> nn.Module:
    """A BatchNorm layer of the given ``kind`` (see ``BATCH_NORM_KINDS``) for 1-d or 2-d features.

    Args:
        kind: ``"affine"`` or ``"stats_free"``.
        num_features: channels (``dims=2``) or features (``dims=1``).
        dims: 1 for ``[N, C]`` inputs, 2 for ``[N, C, H, W]`` inputs.
    """
    if kind not in BATCH_NORM_KINDS:
        raise ValueError(
            f"unknown batch_norm {kind!r}; choose one of {', '.join(BATCH_NORM_KINDS)}"
        )
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    if kind == "affine":
        return cls(num_features)
    return cls(num_features, affine=False, track_running_stats=False)
