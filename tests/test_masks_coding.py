"""Round trips and sizes of the mask coders (retain.core.mask_coding), with seeded random
property checks over sizes, densities and structures (no extra test dependency)."""

import numpy as np
import pytest
import torch

from retain.core import mask_coding as mc
from retain.core.mask_coding import (
    MAX_CODE_LENGTH,
    SCHEMES,
    canonical_codes,
    decode_bits,
    encode_bits,
    encode_with,
    entropy_bits,
    huffman_lengths,
    scheme_of,
)
from retain.core.masks import decode_mask, encode_mask

SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 1000, 20_000]
DENSITIES = [0.0, 0.001, 0.03, 0.1, 0.3, 0.5, 0.7, 0.97, 1.0]


def random_masks(seed=0, n_cases=150):
    """Bernoulli masks, clustered (Markov) masks, long runs and periodic patterns."""
    rng = np.random.default_rng(seed)
    for _ in range(n_cases):
        n = int(rng.choice([rng.integers(0, 300), rng.integers(300, 30_000)]))
        kind = rng.integers(4)
        if kind == 0:
            yield rng.random(n) < rng.random()
        elif kind == 1:  # runs with random switching probability
            flips = rng.random(n) < rng.choice([0.001, 0.01, 0.2])
            yield (np.cumsum(flips) % 2).astype(bool)
        elif kind == 2:  # a few long blocks of ones
            b = np.zeros(n, dtype=bool)
            for _ in range(rng.integers(0, 4)):
                lo = rng.integers(0, max(n, 1))
                b[lo : lo + rng.integers(0, 2000)] = True
            yield b
        else:
            period = int(rng.integers(1, 40))
            yield (np.arange(n) % period) == 0


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_scheme_round_trips_every_size_and_density(scheme):
    rng = np.random.default_rng(1)
    for n in SIZES:
        for p in DENSITIES:
            bits = rng.random(n) < p
            out = decode_bits(encode_with(bits, scheme))
            assert out.dtype == bool and out.shape == (n,)
            assert np.array_equal(out, bits), (scheme, n, p)


def test_random_structured_masks_round_trip_and_best_scheme_is_chosen():
    for bits in random_masks():
        data = encode_bits(bits)
        assert np.array_equal(decode_bits(data), bits)
        sizes = {s: len(encode_with(bits, s)) for s in SCHEMES}
        assert len(data) <= min(sizes.values())
        assert len(data) <= 1 + 5 + -(-len(bits) // 8)  # never worse than raw + header


def test_sparse_masks_code_close_to_their_entropy_and_half_masks_do_not_compress():
    rng = np.random.default_rng(2)
    n = 200_000
    for p in (0.01, 0.03, 0.1, 0.3):
        bits = rng.random(n) < p
        coded_bits = 8 * len(encode_bits(bits))
        assert coded_bits < 1.03 * entropy_bits(bits) + 300, p
        inv = 8 * len(encode_bits(~bits))  # dense masks: the complement is coded
        assert inv < 1.03 * entropy_bits(bits) + 300, p
    half = rng.random(n) < 0.5
    data = encode_bits(half)
    assert scheme_of(data) == "raw" and 8 * len(data) >= n  # honest: no free lunch


def test_tensor_input_and_invalid_input():
    t = torch.rand(3, 50) < 0.2
    assert np.array_equal(decode_bits(encode_bits(t)), t.reshape(-1).numpy())
    assert np.array_equal(decode_bits(encode_bits(t.int())), t.reshape(-1).numpy())
    with pytest.raises(ValueError, match="only 0 and 1"):
        encode_bits(np.array([0, 2, 1]))


def test_corrupt_or_truncated_codes_raise():
    bits = np.random.default_rng(3).random(5000) < 0.05
    for scheme in SCHEMES:
        data = encode_with(bits, scheme)
        with pytest.raises(ValueError):
            decode_bits(data[: max(2, len(data) // 2)])
    with pytest.raises(ValueError):
        decode_bits(b"")
    with pytest.raises(ValueError):
        decode_bits(bytes([99, 3]))


def test_huffman_lengths_are_a_complete_prefix_code_within_the_length_limit():
    rng = np.random.default_rng(4)
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    cases = [rng.integers(0, 1000, 256), np.array(fib + [0] * 216), np.array([5] + [0] * 255)]
    cases.append(np.array([0, 7, 0, 3]))
    for freqs in cases:
        lengths = huffman_lengths(freqs)
        used = freqs > 0
        assert np.all((lengths > 0) == used)
        assert lengths.max() <= MAX_CODE_LENGTH
        if used.sum() >= 2:
            assert sum(2.0 ** -lengths[used]) == pytest.approx(1.0)  # Kraft equality
        codes = canonical_codes(lengths)
        words = [format(int(codes[s]), f"0{lengths[s]}b") for s in np.flatnonzero(used)]
        for a in words:  # prefix-free
            assert not any(b != a and b.startswith(a) for b in words)
    # unconstrained Huffman would need 38 bits for these Fibonacci counts
    assert huffman_lengths(np.array(fib + [0] * 216)).max() == MAX_CODE_LENGTH


def test_huffman_is_optimal_on_a_small_known_case():
    lengths = huffman_lengths(np.array([45, 13, 12, 16, 9, 5]))  # the textbook example
    assert int((np.array([45, 13, 12, 16, 9, 5]) * lengths).sum()) == 224


def test_run_symbols_and_gaps_invert():
    gaps = np.array([0, 3, 254, 255, 256, 1000, 0])
    symbols = mc._run_symbols(gaps)
    assert symbols.max() <= 255
    assert np.array_equal(mc._gaps_from_run_symbols(symbols), gaps)


def test_encode_mask_inside_a_region_codes_only_that_region():
    g = torch.Generator().manual_seed(5)
    within = torch.rand(40, 30, generator=g) < 0.3
    mask = within & (torch.rand(40, 30, generator=g) < 0.5)
    data = encode_mask(mask, within)
    assert torch.equal(decode_mask(data, within=within), mask)
    assert len(decode_bits(data)) == int(within.sum())  # only positions inside are coded
    assert torch.equal(decode_mask(encode_mask(mask), shape=(40, 30)), mask)
    with pytest.raises(ValueError, match="outside"):
        encode_mask(mask | ~within, within)
    with pytest.raises(ValueError, match="within"):
        decode_mask(data, within=torch.ones(40, 30, dtype=torch.bool))
