"""Batched tensor augmentations for image batches ``(N, C, H, W)``: whole-batch tensor ops, no
per-sample Python loops. Randomness comes only from the ``generator`` passed in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from retain.data.benchmark import DataError


def _check_images(x: Tensor, fn: str) -> None:
    if x.ndim != 4:
        raise DataError(f"{fn} needs a batch of images (N, C, H, W), got shape {tuple(x.shape)}")


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad each image by ``padding`` pixels on every side and cut out a random ``H x W``
    window per image (an independent offset in ``0 .. 2 * padding`` on each axis)."""
    _check_images(x, "random_crop")
    if padding < 0:
        raise DataError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x.clone()
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dev = x.device
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(dev)
    rows = offsets[0, :, None] + torch.arange(h, device=dev)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(w, device=dev)  # (N, W)
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def random_hflip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability ``p`` (independently per image)."""
    _check_images(x, "random_hflip")
    flip = (torch.rand(len(x), generator=generator) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def normalize(x: Tensor, mean: float | Sequence[float], std: float | Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel (dimension 1) of a batch ``(N, C, ...)``; scalars apply
    to every channel."""
    if x.ndim < 2:
        raise DataError(f"normalize needs a batch (N, C, ...), got shape {tuple(x.shape)}")
    m = torch.as_tensor(mean, dtype=x.dtype).reshape(-1)
    s = torch.as_tensor(std, dtype=x.dtype).reshape(-1)
    for what, v in (("mean", m), ("std", s)):
        if len(v) not in (1, x.shape[1]):
            raise DataError(f"{what} has {len(v)} values for {x.shape[1]} channels")
    if bool((s == 0).any()):
        raise DataError("std must not be zero")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - m.reshape(shape)) / s.reshape(shape)


#: the keys of an augmentation spec (``TrainConfig.augment``)
AUGMENT_KEYS = ("crop", "flip")


def make_augment(
    spec: dict[str, Any] | None,
) -> Callable[[Tensor, torch.Generator | None], Tensor] | None:
    """The training-time augmentation of a config: ``{crop: P, flip: true}`` is a random crop
    after zero-padding ``P`` pixels, then a random horizontal flip, on whole batches (on the
    batch's device; randomness from the generator passed in) - the CIFAR/TinyImageNet recipe of
    ScrollNet (FACIL: pad 4, crop 32, flip). ``None`` or ``{}``: no augmentation.

    Raises:
        DataError: an unknown key or a bad value.
    """
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise DataError(f"augment must be a mapping like {{crop: 4, flip: true}}, got {spec!r}")
    unknown = sorted(set(spec) - set(AUGMENT_KEYS))
    if unknown:
        raise DataError(f"augment: unknown keys {unknown}; valid: {', '.join(AUGMENT_KEYS)}")
    crop = spec.get("crop", 0)
    flip = spec.get("flip", False)
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
        raise DataError(f"augment.crop must be a padding of >= 0 pixels, got {crop!r}")
    if not isinstance(flip, bool):
        raise DataError(f"augment.flip must be true or false, got {flip!r}")

    def augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if crop:
            x = random_crop(x, crop, generator)
        if flip:
            x = random_hflip(x, generator)
        return x

    return augment
