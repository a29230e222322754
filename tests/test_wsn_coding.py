"""Mask coding as WSN uses it: a task mask coded *given* the union of the earlier masks
(``retain.core.masks.encode_mask(..., given=...)``), round trips over many densities.

``hypothesis`` is not installed here, so the property tests run over seeded random masks of
many densities and shapes instead."""

import itertools

import pytest
import torch

from retain.core.masks import MaskBank, decode_mask, encode_mask

DENSITIES = [0.0, 0.001, 0.01, 0.03, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 0.999, 1.0]
SHAPES = [(1,), (7,), (64,), (13, 17), (100, 100), (8, 3, 3, 3), (300, 784)]


def _random_mask(shape, density, g):
    return torch.rand(shape, generator=g) < density


@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_given_a_known_region_over_many_densities(shape):
    g = torch.Generator().manual_seed(len(shape) * 1000 + shape[0])
    for p_mask, p_given in itertools.product(DENSITIES, [0.0, 0.05, 0.4, 0.95, 1.0]):
        mask = _random_mask(shape, p_mask, g)
        given = _random_mask(shape, p_given, g)
        code = encode_mask(mask, given=given)
        assert isinstance(code, bytes)
        out = decode_mask(code, shape, given=given)
        assert out.dtype == torch.bool and out.shape == mask.shape
        assert torch.equal(out, mask), (shape, p_mask, p_given)


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_given_and_within_together(seed):
    g = torch.Generator().manual_seed(seed)
    shape = (37, 29)
    within = _random_mask(shape, [0.2, 0.5, 0.9][seed % 3], g)
    mask = within & _random_mask(shape, [0.05, 0.5, 0.95][seed // 2], g)
    given = _random_mask(shape, 0.3, g)
    code = encode_mask(mask, within=within, given=given)
    assert torch.equal(decode_mask(code, within=within, given=given), mask)


def test_a_task_sequence_decodes_from_its_codes_alone():
    """WSN's chain: m_t is coded given M_{t-1}; a decoder holding only the codes rebuilds every
    m_t and every union M_t, task after task."""
    g = torch.Generator().manual_seed(0)
    shape, n = (50, 80), 50 * 80
    scores = torch.rand(shape, generator=g)
    union = torch.zeros(shape, dtype=torch.bool)
    masks, codes = [], []
    for _ in range(8):  # drifting scores: masks overlap a lot, as WSN's shared scores make them
        scores += 0.3 * torch.rand(shape, generator=g)
        m = torch.zeros(n, dtype=torch.bool)
        m[scores.flatten().topk(n // 10).indices] = True
        m = m.view(shape)
        codes.append(encode_mask(m, given=union))
        masks.append(m)
        union = union | m
    known = torch.zeros(shape, dtype=torch.bool)
    for m, code in zip(masks, codes, strict=True):
        decoded = decode_mask(code, shape, given=known)
        assert torch.equal(decoded, m)
        known |= decoded
    assert torch.equal(known, union)
    # conditioning pays: a mask that mostly reuses M_{t-1} costs less than coding it alone
    plain = sum(len(encode_mask(m)) for m in masks[1:])
    assert sum(len(c) for c in codes[1:]) < plain


def test_given_errors():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="given has shape"):
        encode_mask(mask, given=torch.zeros(3, 4, dtype=torch.bool))
    code = encode_mask(mask, given=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="given"):
        decode_mask(code, (4, 4), given=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        decode_mask(code, given=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="truncated"):
        decode_mask(b"\x01", (4, 4), given=torch.zeros(4, 4, dtype=torch.bool))


def test_mask_bank_codes_given_a_region_and_reports_their_real_length():
    g = torch.Generator().manual_seed(1)
    bank = MaskBank()
    union = torch.zeros(40, 60, dtype=torch.bool)
    masks = []
    for t in range(3):
        m = _random_mask((40, 60), 0.1, g) | (union & _random_mask((40, 60), 0.5, g))
        bank.add(t, {"fc": m}, given={"fc": union})
        masks.append(m)
        union = union | m
    known = torch.zeros(40, 60, dtype=torch.bool)
    for t, m in enumerate(masks):
        assert torch.equal(bank.get(t, "fc"), m)
        assert torch.equal(decode_mask(bank.code(t, "fc"), (40, 60), given=known), m)
        known |= m
    line = bank.report()["layers"]["fc"]
    assert line["mask_bytes_encoded"] == sum(len(bank.code(t, "fc")) for t in range(3))
    assert line["used"] == int(union.sum())
