"""Lossless coding of binary masks: canonical Huffman over 8-bit symbols, our own small encoder.

Why not "Huffman on the bits": a binary mask has two symbols, so a Huffman code of single bits
spends exactly one bit per weight (no compression at all; see the notes on WSN's official
``comp_decomp_mask_huffman``). Real gains come from coding *groups* of bits, so a mask is coded
as one of:

``RAW``
    the bits, packed 8 to a byte (the fallback; never more than 1 bit per position + header).
``BYTES``
    Huffman over the packed bytes (8 bits per symbol, alphabet 256). Good for masks of any
    density away from 0.5; for density p it approaches the 8-bit block entropy.
``RUNS`` / ``RUNS_INVERTED``
    Huffman over run lengths: the gap of zeros before every one is a symbol ``0..254``; a gap
    of 255 or more is cut into ``255`` continuation symbols. Best for very sparse masks (and,
    inverted, for very dense ones), where the bytes code cannot go below 1 bit per 8 positions.

:func:`encode_bits` tries every scheme and keeps the shortest, so the result is never longer
than the raw packing plus a header of a few bytes. The stream is self-describing
(:func:`decode_bits` needs nothing else). Everything counted by the capacity reports
(``retain.core.masks``) is the length of these real byte strings, headers and code tables
included.

Format: ``scheme`` (1 byte), ``n_bits`` (LEB128 varint), then for the Huffman schemes the
code lengths of the 256 symbols as 4-bit nibbles (128 bytes), ``n_symbols`` (varint) and the
packed bit stream. Code lengths are limited to :data:`MAX_CODE_LENGTH` = 15 bits.

Encoding and decoding are vectorised with numpy (no Python loop per bit or per symbol):
decoding finds the symbol boundaries with pointer doubling over a table lookup at every bit
position.
"""

from __future__ import annotations

import heapq

import numpy as np

RAW, BYTES, RUNS, RUNS_INVERTED = 0, 1, 2, 3
SCHEMES = {"raw": RAW, "bytes": BYTES, "runs": RUNS, "runs_inverted": RUNS_INVERTED}
MAX_CODE_LENGTH = 15
_ALPHABET = 256
_RUN_CONTINUE = 255  # a run of 255 zeros that does not end in a one


# ---------------------------------------------------------------------------------- varints
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated mask code (varint)")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, pos


# ---------------------------------------------------------------------------------- Huffman
def huffman_lengths(freqs: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Code length of every symbol of a Huffman code for ``freqs`` (0 for absent symbols).

    Lengths longer than ``max_length`` are avoided by flattening the frequencies (halving
    them, keeping every used symbol at least 1) and rebuilding: with an alphabet of at most
    ``2**max_length`` symbols this always terminates (equal frequencies give a balanced tree).
    A single used symbol gets length 1.
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    used = np.flatnonzero(freqs)
    lengths = np.zeros(len(freqs), dtype=np.int64)
    if len(used) == 0:
        return lengths
    if len(used) > 2**max_length:
        raise ValueError(f"{len(used)} symbols cannot have codes of at most {max_length} bits")
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    f = freqs[used].copy()
    while True:
        # heap items: (weight, tie-break, symbols below this node)
        heap = [(int(w), i, [i]) for i, w in enumerate(f)]
        heapq.heapify(heap)
        depth = np.zeros(len(f), dtype=np.int64)
        counter = len(f)
        while len(heap) > 1:
            w1, _, s1 = heapq.heappop(heap)
            w2, _, s2 = heapq.heappop(heap)
            merged = s1 + s2
            depth[merged] += 1
            heapq.heappush(heap, (w1 + w2, counter, merged))
            counter += 1
        if depth.max() <= max_length:
            lengths[used] = depth
            return lengths
        f = np.maximum(f // 2, 1)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes (as integers) for code ``lengths``; symbols sorted by
    (length, symbol) get consecutive codes. Absent symbols (length 0) get code 0."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    order = sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (lengths[s], s))
    code, prev = 0, 0
    for s in order:
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def _emit(symbols: np.ndarray, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated codes of ``symbols`` as a uint8 0/1 array (vectorised, in chunks)."""
    parts = []
    for lo in range(0, len(symbols), 1 << 20):
        chunk = symbols[lo : lo + (1 << 20)]
        ls = lengths[chunk]
        cs = codes[chunk]
        j = np.arange(int(ls.max()))
        # bit j (from the most significant) of each code, for j < its length
        shifts = ls[:, None] - 1 - j[None, :]
        bits = (cs[:, None] >> np.maximum(shifts, 0)) & 1
        parts.append(bits[shifts >= 0].astype(np.uint8))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


def _decode_symbols(
    stream: np.ndarray, n_symbols: int, lengths: np.ndarray, codes: np.ndarray
) -> np.ndarray:
    """Inverse of :func:`_emit` for a 0/1 array ``stream`` holding ``n_symbols`` codes.

    A lookup table indexed by the next ``L`` bits (``L`` = longest code) gives the symbol and
    the code length at *every* bit position. The chain of symbol starts ``0, next(0), ...``
    is then found without a Python loop per symbol: ``next`` composed ``B ~ sqrt(n)`` times
    (by doubling) gives every ``B``-th start, and all those anchors advance together.
    """
    if n_symbols == 0:
        return np.zeros(0, dtype=np.int64)
    big = int(lengths.max())
    table_sym = np.zeros(1 << big, dtype=np.int64)
    table_len = np.zeros(1 << big, dtype=np.int64)
    for s in np.flatnonzero(lengths).tolist():
        ln = int(lengths[s])
        lo = int(codes[s]) << (big - ln)
        hi = (int(codes[s]) + 1) << (big - ln)
        table_sym[lo:hi] = s
        table_len[lo:hi] = ln
    n = len(stream)
    padded = np.concatenate([stream.astype(np.int32), np.zeros(big, dtype=np.int32)])
    window = np.zeros(n, dtype=np.int32)
    for j in range(big):
        window = (window << 1) | padded[j : j + n]
    step = table_len[window]  # 0 where no code matches (only an error at a symbol start)
    # nxt[p]: start of the symbol after the one starting at p (n: absorbing end sentinel)
    nxt = np.append(np.minimum(np.arange(n, dtype=np.int64) + step, n), n)
    # anchors: the starts of symbols 0, B, 2B, ... by jumping B symbols at a time, then all
    # anchors advance together one symbol at a time (B numpy steps over n_symbols/B anchors)
    b = max(0, int(np.ceil(np.log2(max(n_symbols, 1)) / 2)))
    block = 1 << b
    jump = nxt
    for _ in range(b):
        jump = jump[jump]
    n_anchors = -(-n_symbols // block)
    anchors = np.zeros(n_anchors, dtype=np.int64)
    for i in range(1, n_anchors):
        anchors[i] = jump[anchors[i - 1]]
    starts = np.empty((n_anchors, block), dtype=np.int64)
    cur = anchors
    for j in range(block):
        starts[:, j] = cur
        cur = nxt[cur]
    starts = starts.reshape(-1)[:n_symbols]
    if np.any(starts >= n):
        raise ValueError("corrupt mask code (stream too short)")
    found = window[starts]
    if np.any(table_len[found] == 0):
        raise ValueError("corrupt mask code (bit pattern matches no code)")
    return table_sym[found]


def _huffman_plan(symbols: np.ndarray) -> tuple[np.ndarray, int]:
    """Code lengths for ``symbols`` and the byte size of the payload they would give."""
    freqs = np.bincount(symbols, minlength=_ALPHABET)
    lengths = huffman_lengths(freqs)
    n_bits = int((freqs * lengths).sum())
    return lengths, _ALPHABET // 2 + len(_varint(len(symbols))) + -(-n_bits // 8)


def _huffman_payload(symbols: np.ndarray, lengths: np.ndarray | None = None) -> bytes:
    if lengths is None:
        lengths, _ = _huffman_plan(symbols)
    codes = canonical_codes(lengths)
    stream = _emit(symbols, codes, lengths)
    nibbles = lengths.astype(np.uint8)
    table = bytes((nibbles[0::2] << 4) | nibbles[1::2])
    return table + _varint(len(symbols)) + np.packbits(stream).tobytes()


def _read_huffman(data: bytes, pos: int) -> np.ndarray:
    if pos + _ALPHABET // 2 > len(data):
        raise ValueError("truncated mask code (code table)")
    table = np.frombuffer(data, dtype=np.uint8, count=_ALPHABET // 2, offset=pos)
    pos += _ALPHABET // 2
    lengths = np.empty(_ALPHABET, dtype=np.int64)
    lengths[0::2] = table >> 4
    lengths[1::2] = table & 0x0F
    n_symbols, pos = _read_varint(data, pos)
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=pos))
    return _decode_symbols(stream, n_symbols, lengths, canonical_codes(lengths))


# ---------------------------------------------------------------------------------- runs
def _run_symbols(bits: np.ndarray) -> np.ndarray:
    """Zero-run symbols of ``bits`` with a virtual one appended after the end."""
    ones = np.flatnonzero(bits)
    ones = np.append(ones, len(bits))
    gaps = np.diff(ones, prepend=-1) - 1  # zeros before each one
    full, rest = np.divmod(gaps, _RUN_CONTINUE)
    # each gap becomes `full` continuation symbols followed by `rest`
    reps = full + 1
    out = np.full(int(reps.sum()), _RUN_CONTINUE, dtype=np.int64)
    ends = np.cumsum(reps) - 1
    out[ends] = rest
    return out


def _bits_from_runs(symbols: np.ndarray, n_bits: int) -> np.ndarray:
    terminal = symbols != _RUN_CONTINUE
    advance = np.where(terminal, symbols + 1, _RUN_CONTINUE)  # positions consumed per symbol
    ends = np.cumsum(advance)
    one_positions = ends[terminal] - 1
    if len(one_positions) == 0 or one_positions[-1] != n_bits:
        raise ValueError("corrupt mask code (runs do not add up to the mask length)")
    bits = np.zeros(n_bits, dtype=bool)
    bits[one_positions[:-1]] = True
    return bits


# ---------------------------------------------------------------------------------- API
def _as_bits(bits) -> np.ndarray:
    if hasattr(bits, "detach"):  # a torch tensor
        bits = bits.detach().cpu().numpy()
    arr = np.asarray(bits)
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError("a mask must hold only 0 and 1")
        arr = arr.astype(bool)
    return arr.reshape(-1)


def encode_with(bits, scheme: str) -> bytes:
    """Code a flat binary sequence with one named scheme (``raw``, ``bytes``, ``runs``,
    ``runs_inverted``)."""
    arr = _as_bits(bits)
    sid = SCHEMES[scheme]
    head = bytes([sid]) + _varint(len(arr))
    if sid == RAW:
        return head + np.packbits(arr).tobytes()
    return head + _huffman_payload(_symbols(arr, sid))


def _symbols(arr: np.ndarray, sid: int) -> np.ndarray:
    if sid == BYTES:
        return np.packbits(arr).astype(np.int64)
    return _run_symbols(~arr if sid == RUNS_INVERTED else arr)


def encode_bits(bits) -> bytes:
    """Code a flat binary sequence (bool/0-1 numpy array or tensor) losslessly with the
    shortest of the schemes of this module (sizes are computed from the symbol counts first;
    only the winner is emitted). ``decode_bits(encode_bits(b))`` gives ``b`` back."""
    arr = _as_bits(bits)
    head_len = 1 + len(_varint(len(arr)))
    best, best_size, best_plan = RAW, -(-len(arr) // 8), None
    if len(arr) >= 64:  # below this the 128-byte code table can never pay off
        runs = RUNS if arr.mean() <= 0.5 else RUNS_INVERTED
        for sid in (BYTES, runs):
            symbols = _symbols(arr, sid)
            lengths, size = _huffman_plan(symbols)
            if size < best_size:
                best, best_size, best_plan = sid, size, (symbols, lengths)
    if best_plan is None:
        return encode_with(arr, "raw")
    data = bytes([best]) + _varint(len(arr)) + _huffman_payload(*best_plan)
    assert len(data) == head_len + best_size
    return data


def decode_bits(data: bytes) -> np.ndarray:
    """The boolean array coded by :func:`encode_bits` (or :func:`encode_with`)."""
    if not data:
        raise ValueError("empty mask code")
    sid = data[0]
    n_bits, pos = _read_varint(data, 1)
    if sid == RAW:
        out = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=pos), count=n_bits)
        if len(out) != n_bits:
            raise ValueError("truncated mask code (raw bits)")
        return out.astype(bool)
    if sid == BYTES:
        packed = _read_huffman(data, pos).astype(np.uint8)
        out = np.unpackbits(packed, count=n_bits)
        if len(out) != n_bits:
            raise ValueError("corrupt mask code (byte count)")
        return out.astype(bool)
    if sid in (RUNS, RUNS_INVERTED):
        bits = _bits_from_runs(_read_huffman(data, pos), n_bits)
        return ~bits if sid == RUNS_INVERTED else bits
    raise ValueError(f"unknown mask code scheme {sid}")


def scheme_of(data: bytes) -> str:
    """Name of the scheme that coded ``data``."""
    return {v: k for k, v in SCHEMES.items()}[data[0]]


def entropy_bits(bits) -> float:
    """Order-0 entropy of the sequence in bits (``n * H(p)``): the floor of any code that
    treats positions as independent, for comparing with the real encoded size."""
    arr = _as_bits(bits)
    n = len(arr)
    if n == 0:
        return 0.0
    p = float(arr.mean())
    if p in (0.0, 1.0):
        return 0.0
    return float(n * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)))
