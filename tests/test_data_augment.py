"""Batched augmentations: crops are windows of the padded image, flips are all-or-nothing per
image, normalisation is per channel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retain.data import DataError, normalize, random_crop, random_hflip


def _images(n=16, c=3, h=6, w=5):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0))


def test_random_crop_windows_of_padded_image():
    x, p = _images(), 2
    out = random_crop(x, p, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = F.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 5])
        ]
        assert matches, f"sample {i} is no window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1  # offsets differ across the batch


def test_random_crop_seeded_and_zero_padding():
    x = _images()
    a = random_crop(x, 3, torch.Generator().manual_seed(5))
    b = random_crop(x, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(random_crop(x, 0), x)
    with pytest.raises(DataError, match="padding"):
        random_crop(x, -1)
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        random_crop(x[0], 1)


def test_random_hflip():
    x = _images(n=64)
    out = random_hflip(x, torch.Generator().manual_seed(2))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 54
    assert torch.equal(random_hflip(x, p=0.0), x)
    assert torch.equal(random_hflip(x, p=1.0), x.flip(-1))


def test_normalize():
    x = _images()
    out = normalize(x, [0.1, 0.2, 0.3], [0.5, 1.0, 2.0])
    torch.testing.assert_close(out[:, 2], (x[:, 2] - 0.3) / 2.0)
    torch.testing.assert_close(normalize(x, 0.5, 0.25), (x - 0.5) / 0.25)
    with pytest.raises(DataError, match="2 values for 3 channels"):
        normalize(x, [0.1, 0.2], 1.0)
    with pytest.raises(DataError, match="zero"):
        normalize(x, 0.0, 0.0)
