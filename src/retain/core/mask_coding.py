"""Lossless coding of binary masks with our own small, vectorised entropy coders.

Why not "Huffman on the bits": a binary mask has two symbols, so a Huffman code of single bits
spends exactly one bit per weight (no compression at all; see the notes on WSN's official
``comp_decomp_mask_huffman``). Real gains come from coding *groups* of bits. A mask is coded
with one of these schemes:

``raw``
    the bits packed 8 to a byte (the fallback: 1 bit per position plus a short header).
``bytes``
    canonical Huffman over the packed bytes (8-bit symbols, alphabet 256); approaches the
    8-bit block entropy for any density away from 0.5.
``runs`` / ``runs_inverted``
    canonical Huffman over run lengths: the number of zeros before every one is a symbol
    ``0..254``, a longer gap is cut into ``255`` continuation symbols. Strong for sparse masks
    (and, on the complement, for dense ones), where ``bytes`` cannot go below 1 bit per byte.
``rice`` / ``rice_inverted``
    the same gaps with a Golomb-Rice code (parameter ``k`` chosen for the mask): no code table,
    so it wins on small layers; near-optimal when the ones are spread independently.

:func:`encode_bits` computes the size every scheme would give from symbol counts alone, then
emits only the shortest: the result is never longer than the raw packing (plus header) and is
self-describing (:func:`decode_bits` needs nothing else). The capacity reports of
``retain.core.masks`` count the length of these real byte strings, headers and tables included.

Format: scheme (1 byte), number of bits (LEB128 varint), then the scheme's payload:

* Huffman payload: the code table, number of symbols (varint), the packed code stream. The
  table is the 256 code lengths as 4-bit nibbles (128 bytes), or, when shorter, a 32-byte
  bitmap of the used symbols followed by their nibbles. Code lengths are at most
  :data:`MAX_CODE_LENGTH` = 15 bits.
* Rice payload: ``k`` (1 byte), number of gaps (varint), the packed stream of
  ``q = gap >> k`` ones, a zero, and the ``k`` low bits of the gap (most significant first).

No Python loop runs per bit or per symbol: decoding computes, at every bit position, where a
symbol starting there would end, then follows that chain by composing it ``~sqrt(n)`` times
(pointer doubling) and advancing all the resulting anchors together.
"""

from __future__ import annotations

import heapq

import numpy as np

RAW, BYTES, RUNS, RUNS_INVERTED, RICE, RICE_INVERTED = range(6)
SCHEMES = {
    "raw": RAW,
    "bytes": BYTES,
    "runs": RUNS,
    "runs_inverted": RUNS_INVERTED,
    "rice": RICE,
    "rice_inverted": RICE_INVERTED,
}
MAX_CODE_LENGTH = 15
MAX_RICE_K = 30
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


def _stream(data: bytes, pos: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=pos))


# ---------------------------------------------------------------------------------- chains
def _chain_starts(nxt: np.ndarray, n_symbols: int) -> np.ndarray:
    """Positions ``0, nxt[0], nxt[nxt[0]], ...`` (``n_symbols`` of them) without a Python loop
    per symbol. ``nxt`` has one extra last entry, an absorbing end sentinel."""
    b = max(0, int(np.ceil(np.log2(max(n_symbols, 1)) / 2)))
    block = 1 << b
    jump = nxt
    for _ in range(b):  # jump = nxt composed 2^b times
        jump = jump[jump]
    n_anchors = -(-n_symbols // block)
    anchors = np.zeros(n_anchors, dtype=np.int64)
    for i in range(1, n_anchors):  # ~sqrt(n_symbols) steps
        anchors[i] = jump[anchors[i - 1]]
    starts = np.empty((n_anchors, block), dtype=np.int64)
    cur = anchors
    for j in range(block):  # ~sqrt(n_symbols) vector steps
        starts[:, j] = cur
        cur = nxt[cur]
    return starts.reshape(-1)[:n_symbols]


# ---------------------------------------------------------------------------------- Huffman
def huffman_lengths(freqs: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Code length of every symbol of a Huffman code for ``freqs`` (0 for absent symbols).

    Lengths above ``max_length`` are avoided by flattening the frequencies (halving them,
    keeping every used symbol at least 1) and rebuilding; with at most ``2**max_length``
    symbols this terminates (equal frequencies give a balanced tree). A single used symbol
    gets length 1.
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
        heap = [(int(w), i, [i]) for i, w in enumerate(f)]  # (weight, tie-break, leaves)
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
    """Canonical Huffman codes (as integers) for code ``lengths``: symbols sorted by
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
        shifts = ls[:, None] - 1 - j[None, :]  # bit j (MSB first) of each code, j < length
        bits = (cs[:, None] >> np.maximum(shifts, 0)) & 1
        parts.append(bits[shifts >= 0].astype(np.uint8))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


def _decode_huffman(
    stream: np.ndarray, n_symbols: int, lengths: np.ndarray, codes: np.ndarray
) -> np.ndarray:
    """Inverse of :func:`_emit`: a table indexed by the next ``L`` bits (``L`` = longest
    code) gives symbol and length at every bit position; :func:`_chain_starts` finds the
    symbol starts."""
    if n_symbols == 0:
        return np.zeros(0, dtype=np.int64)
    big = int(lengths.max())
    table_sym = np.zeros(1 << big, dtype=np.int64)
    table_len = np.zeros(1 << big, dtype=np.int64)
    for s in np.flatnonzero(lengths).tolist():
        ln = int(lengths[s])
        lo, hi = int(codes[s]) << (big - ln), (int(codes[s]) + 1) << (big - ln)
        table_sym[lo:hi] = s
        table_len[lo:hi] = ln
    n = len(stream)
    padded = np.concatenate([stream.astype(np.int32), np.zeros(big, dtype=np.int32)])
    window = np.zeros(n, dtype=np.int32)
    for j in range(big):
        window = (window << 1) | padded[j : j + n]
    step = table_len[window]  # 0 where no code matches: an error only at a symbol start
    nxt = np.append(np.minimum(np.arange(n, dtype=np.int64) + step, n), n)
    starts = _chain_starts(nxt, n_symbols)
    if np.any(starts >= n):
        raise ValueError("corrupt mask code (stream too short)")
    found = window[starts]
    if np.any(table_len[found] == 0):
        raise ValueError("corrupt mask code (bit pattern matches no code)")
    return table_sym[found]


def _table_bytes(lengths: np.ndarray) -> bytes:
    """The code lengths: full nibble table, or bitmap of used symbols + their nibbles."""
    nib = lengths.astype(np.uint8)
    full = bytes([0]) + bytes((nib[0::2] << 4) | nib[1::2])
    used = nib[nib > 0]
    if len(used) % 2:
        used = np.append(used, 0).astype(np.uint8)
    sparse = bytes([1]) + np.packbits(nib > 0).tobytes() + bytes((used[0::2] << 4) | used[1::2])
    return min(full, sparse, key=len)


def _read_table(data: bytes, pos: int) -> tuple[np.ndarray, int]:
    if pos >= len(data):
        raise ValueError("truncated mask code (code table)")
    kind = data[pos]
    pos += 1
    lengths = np.zeros(_ALPHABET, dtype=np.int64)
    if kind == 0:
        raw = np.frombuffer(data, dtype=np.uint8, count=_ALPHABET // 2, offset=pos)
        pos += _ALPHABET // 2
        lengths[0::2], lengths[1::2] = raw >> 4, raw & 0x0F
        return lengths, pos
    if kind != 1:
        raise ValueError("corrupt mask code (code table kind)")
    present = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=32, offset=pos)) > 0
    pos += 32
    n_used = int(present.sum())
    raw = np.frombuffer(data, dtype=np.uint8, count=(n_used + 1) // 2, offset=pos)
    pos += (n_used + 1) // 2
    nib = np.empty(2 * len(raw), dtype=np.int64)
    nib[0::2], nib[1::2] = raw >> 4, raw & 0x0F
    lengths[present] = nib[:n_used]
    return lengths, pos


def _huffman_plan(symbols: np.ndarray) -> tuple[np.ndarray, int]:
    """Code lengths for ``symbols`` and the byte size of the payload they would give."""
    freqs = np.bincount(symbols, minlength=_ALPHABET)
    lengths = huffman_lengths(freqs)
    n_bits = int((freqs * lengths).sum())
    size = len(_table_bytes(lengths)) + len(_varint(len(symbols))) + -(-n_bits // 8)
    return lengths, size


def _huffman_payload(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    stream = _emit(symbols, canonical_codes(lengths), lengths)
    return _table_bytes(lengths) + _varint(len(symbols)) + np.packbits(stream).tobytes()


def _read_huffman(data: bytes, pos: int) -> np.ndarray:
    lengths, pos = _read_table(data, pos)
    n_symbols, pos = _read_varint(data, pos)
    return _decode_huffman(_stream(data, pos), n_symbols, lengths, canonical_codes(lengths))


# ---------------------------------------------------------------------------------- runs
def _gaps(bits: np.ndarray) -> np.ndarray:
    """Zeros before every one, with a virtual one appended after the end."""
    ones = np.append(np.flatnonzero(bits), len(bits))
    return np.diff(ones, prepend=-1) - 1


def _bits_from_gaps(gaps: np.ndarray, n_bits: int) -> np.ndarray:
    ones = np.cumsum(gaps + 1) - 1
    if len(ones) == 0 or ones[-1] != n_bits:
        raise ValueError("corrupt mask code (runs do not add up to the mask length)")
    bits = np.zeros(n_bits, dtype=bool)
    bits[ones[:-1]] = True
    return bits


def _run_symbols(gaps: np.ndarray) -> np.ndarray:
    """Gaps as Huffman symbols: ``full`` continuation symbols (255) then the rest."""
    full, rest = np.divmod(gaps, _RUN_CONTINUE)
    reps = full + 1
    out = np.full(int(reps.sum()), _RUN_CONTINUE, dtype=np.int64)
    out[np.cumsum(reps) - 1] = rest
    return out


def _gaps_from_run_symbols(symbols: np.ndarray) -> np.ndarray:
    terminal = symbols != _RUN_CONTINUE
    carried = np.cumsum(~terminal)  # continuations so far
    ends = np.flatnonzero(terminal)
    before = np.concatenate([[0], carried[ends][:-1]]) if len(ends) else np.zeros(0, np.int64)
    return symbols[ends] + _RUN_CONTINUE * (carried[ends] - before)


def _rice_plan(gaps: np.ndarray) -> tuple[int, int]:
    """Best Rice parameter ``k`` for ``gaps`` and the payload size in bytes."""
    best_k, best_bits = 0, None
    for k in range(MAX_RICE_K + 1):
        n_bits = int((gaps >> k).sum()) + len(gaps) * (1 + k)
        if best_bits is None or n_bits < best_bits:
            best_k, best_bits = k, n_bits
        if (gaps >> k).max(initial=0) == 0:
            break
    assert best_bits is not None
    return best_k, 1 + len(_varint(len(gaps))) + -(-best_bits // 8)


def _rice_payload(gaps: np.ndarray, k: int) -> bytes:
    q = gaps >> k
    lens = q + 1 + k
    starts = np.cumsum(lens) - lens
    bits = np.zeros(int(lens.sum()), dtype=np.uint8)
    n_ones = int(q.sum())
    if n_ones:  # unary part: q ones at the start of each code
        first = np.repeat(starts, q)
        bits[first + np.arange(n_ones) - np.repeat(np.cumsum(q) - q, q)] = 1
    if k:
        j = np.arange(k)
        pos = (starts + q + 1)[:, None] + j[None, :]
        bits[pos] = (gaps[:, None] >> (k - 1 - j)[None, :]) & 1
    return bytes([k]) + _varint(len(gaps)) + np.packbits(bits).tobytes()


def _read_rice(data: bytes, pos: int) -> np.ndarray:
    if pos >= len(data):
        raise ValueError("truncated mask code (rice parameter)")
    k = data[pos]
    n_gaps, pos = _read_varint(data, pos + 1)
    if n_gaps == 0:
        return np.zeros(0, dtype=np.int64)
    stream = _stream(data, pos)
    n = len(stream)
    if n == 0:
        raise ValueError("truncated mask code (rice stream)")
    zeros = np.append(np.flatnonzero(stream == 0), n)
    next_zero = zeros[np.searchsorted(zeros, np.arange(n))]  # first zero at or after p
    nxt = np.append(np.minimum(next_zero + 1 + k, n), n)
    starts = _chain_starts(nxt, n_gaps)
    ends = next_zero[np.minimum(starts, n - 1)]
    if np.any(starts >= n) or np.any(ends + k >= n):
        raise ValueError("corrupt mask code (stream too short)")
    q = ends - starts
    r = np.zeros(n_gaps, dtype=np.int64)
    for j in range(k):
        r = (r << 1) | stream[ends + 1 + j]
    return (q << k) | r


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


def _inverted(sid: int) -> bool:
    return sid in (RUNS_INVERTED, RICE_INVERTED)


def _plan(arr: np.ndarray, sid: int) -> tuple[int, object]:
    """(payload size in bytes, what :func:`_payload` needs) for scheme ``sid``."""
    if sid == RAW:
        return -(-len(arr) // 8), None
    if sid == BYTES:
        symbols = np.packbits(arr).astype(np.int64)
        lengths, size = _huffman_plan(symbols)
        return size, (symbols, lengths)
    gaps = _gaps(~arr if _inverted(sid) else arr)
    if sid in (RUNS, RUNS_INVERTED):
        symbols = _run_symbols(gaps)
        lengths, size = _huffman_plan(symbols)
        return size, (symbols, lengths)
    k, size = _rice_plan(gaps)
    return size, (gaps, k)


def _payload(arr: np.ndarray, sid: int, plan: object) -> bytes:
    if sid == RAW:
        return np.packbits(arr).tobytes()
    if sid in (RICE, RICE_INVERTED):
        return _rice_payload(*plan)  # type: ignore[misc]
    return _huffman_payload(*plan)  # type: ignore[misc]


def encode_with(bits, scheme: str) -> bytes:
    """Code a flat binary sequence with one named scheme (see :data:`SCHEMES`)."""
    arr = _as_bits(bits)
    sid = SCHEMES[scheme]
    _, plan = _plan(arr, sid)
    return bytes([sid]) + _varint(len(arr)) + _payload(arr, sid, plan)


def encode_bits(bits) -> bytes:
    """Code a flat binary sequence (bool/0-1 numpy array or tensor) losslessly with the
    shortest scheme of this module (sizes come from symbol counts; only the winner is
    emitted). ``decode_bits(encode_bits(b))`` gives ``b`` back."""
    arr = _as_bits(bits)
    candidates = [RAW]
    if len(arr) >= 16:
        dense = arr.mean() > 0.5
        candidates += [BYTES, RUNS_INVERTED if dense else RUNS, RICE_INVERTED if dense else RICE]
    best = min(((*_plan(arr, sid), sid) for sid in candidates), key=lambda p: (p[0], p[2]))
    size, plan, sid = best
    data = bytes([sid]) + _varint(len(arr)) + _payload(arr, sid, plan)
    assert len(data) == 1 + len(_varint(len(arr))) + size
    return data


def decode_bits(data: bytes) -> np.ndarray:
    """The boolean array coded by :func:`encode_bits` (or :func:`encode_with`)."""
    if not data:
        raise ValueError("empty mask code")
    sid = data[0]
    n_bits, pos = _read_varint(data, 1)
    if sid == RAW:
        if len(data) - pos != -(-n_bits // 8):
            raise ValueError("truncated mask code (raw bits)")
        out = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=pos), count=n_bits)
        return out.astype(bool)
    if sid == BYTES:
        out = np.unpackbits(_read_huffman(data, pos).astype(np.uint8), count=n_bits)
        if len(out) != n_bits:
            raise ValueError("corrupt mask code (byte count)")
        return out.astype(bool)
    if sid in (RUNS, RUNS_INVERTED):
        bits = _bits_from_gaps(_gaps_from_run_symbols(_read_huffman(data, pos)), n_bits)
    elif sid in (RICE, RICE_INVERTED):
        bits = _bits_from_gaps(_read_rice(data, pos), n_bits)
    else:
        raise ValueError(f"unknown mask code scheme {sid}")
    return ~bits if _inverted(sid) else bits


def scheme_of(data: bytes) -> str:
    """Name of the scheme that coded ``data``."""
    return {v: k for k, v in SCHEMES.items()}[data[0]]


def entropy_bits(bits) -> float:
    """Order-0 entropy of the sequence in bits (``n * H(p)``): the floor of any code that
    treats positions as independent, to compare with the real encoded size."""
    arr = _as_bits(bits)
    n = len(arr)
    if n == 0:
        return 0.0
    p = float(arr.mean())
    if p in (0.0, 1.0):
        return 0.0
    return float(n * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)))
