"""The one place that converts between binary code representations (numpy only).

Conventions (see DESIGN.md):

* in memory and on disk a code of K bits is a row of ``np.packbits(bits, axis=1)``
  (big bit order), i.e. ``ceil(K / 8)`` bytes of ``uint8``;
* ``bits`` are 0/1 ``uint8`` rows of length K;
* +-1 codes exist only inside losses (bit 1 <-> +1, bit 0 <-> -1).

Example:
    >>> import numpy as np
    >>> packed = pack_bits(np.array([[1, 0, 1, 1, 0, 0, 0, 0, 1]]))
    >>> packed.tolist()
    [[176, 128]]
    >>> unpack_bits(packed, 9).tolist()
    [[1, 0, 1, 1, 0, 0, 0, 0, 1]]
"""

from __future__ import annotations

import reprlib

import numpy as np

from keras_hashing.errors import CodeLengthError

MIN_BITS = 1
MAX_BITS = 4096


def code_bytes(bits: int) -> int:
    """Bytes taken by one packed code of ``bits`` bits: ceil(bits / 8)."""
    check_bits(bits)
    return (int(bits) + 7) // 8


def check_bits(bits) -> int:
    """Return ``bits`` as an int, or raise CodeLengthError when it is not a usable length."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise CodeLengthError(f"code length must be an integer number of bits, got "
                              f"{reprlib.repr(bits)}")
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise CodeLengthError(
            f"code length {bits} is out of range; use {MIN_BITS}..{MAX_BITS} bits "
            "(deep hashing usually uses 12 to 128)"
        )
    return int(bits)


def pack_bits(bits) -> np.ndarray:
    """Pack 0/1 rows of shape (N, K) into uint8 rows of shape (N, ceil(K/8))."""
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise CodeLengthError(f"bits must be a 2-D array (N, K), got shape {bits.shape}")
    return np.packbits(bits.astype(bool), axis=1)


def unpack_bits(packed, bits: int) -> np.ndarray:
    """Unpack uint8 rows (N, ceil(K/8)) into 0/1 uint8 rows (N, K)."""
    packed = as_packed(packed, bits)
    return np.unpackbits(packed, axis=1, count=bits)


def sign_to_bits(values, threshold: float = 0.0) -> np.ndarray:
    """Bits of real-valued codes: 1 where value >= threshold (so sign(0) = +1)."""
    return (np.asarray(values) >= threshold).astype(np.uint8)


def bits_to_pm1(bits) -> np.ndarray:
    """0/1 bits -> -1/+1 float32 (for losses and reference computations)."""
    return np.asarray(bits, dtype=np.float32) * 2.0 - 1.0


def sign_pm1(values) -> np.ndarray:
    """sign of real values as -1/+1 float32, sign(0) = +1 (numpy; ``losses.sign_pm1`` is
    the tensor twin)."""
    return bits_to_pm1(sign_to_bits(values))


def as_packed(codes, bits: int) -> np.ndarray:
    """Validate packed codes of ``bits`` bits and return them as a C-contiguous uint8 array.

    A single code (1-D) is promoted to one row.
    """
    nbytes = code_bytes(bits)
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[None, :]
    if codes.ndim != 2:
        raise CodeLengthError(f"packed codes must be 2-D (N, {nbytes}), got shape {codes.shape}")
    if codes.dtype != np.uint8:
        raise CodeLengthError(
            f"packed codes must be uint8 (np.packbits output), got {codes.dtype}; "
            "use keras_hashing.codes.pack_bits on 0/1 bits"
        )
    if codes.shape[1] != nbytes:
        raise CodeLengthError(
            f"codes have {codes.shape[1]} bytes per row but {bits}-bit codes take {nbytes}; "
            "was the model trained with another --bits?"
        )
    return mask_padding(np.ascontiguousarray(codes), bits)


def padding_mask(bits: int) -> int:
    """The bits of a code's last byte that belong to the code (0xFF for whole bytes)."""
    return (0xFF << (-int(bits) % 8)) & 0xFF


def mask_padding(codes: np.ndarray, bits: int) -> np.ndarray:
    """``codes`` with the padding bits of the last byte cleared (a copy only when some
    are set): a 12-bit code is 2 bytes, and the 4 bits past the 12th must not count.

    Example:
        >>> mask_padding(np.array([[0, 15]], np.uint8), 12).tolist()
        [[0, 0]]
    """
    mask = padding_mask(bits)
    if mask == 0xFF or codes.shape[0] == 0 or not np.any(codes[:, -1] & ~np.uint8(mask)):
        return codes
    codes = np.array(codes)
    codes[:, -1] &= np.uint8(mask)
    return codes


def hamming_distances(query_codes, database_codes, bits: int) -> np.ndarray:
    """All Hamming distances between packed rows: (Q, N) int32, popcount of XOR.

    Example:
        >>> q = pack_bits([[1, 1, 0, 0]]); d = pack_bits([[1, 1, 0, 0], [0, 0, 1, 1]])
        >>> hamming_distances(q, d, 4).tolist()
        [[0, 4]]
    """
    q = as_packed(query_codes, bits)
    d = as_packed(database_codes, bits)
    qw, dw = word_columns(q), word_columns(d)
    out = np.zeros((q.shape[0], d.shape[0]), dtype=np.int32)
    for w in range(qw.shape[0]):  # word by word keeps the temporary at (Q, N)
        out += np.bitwise_count(qw[w][:, None] ^ dw[w][None, :])
    return out


def word_columns(codes: np.ndarray, bits=None) -> np.ndarray:
    """(W, N) uint64: word w of every code, contiguous (zero-padded to whole words; with
    ``bits``, the padding bits of the last byte are cleared too)."""
    n, nbytes = codes.shape
    nwords = max(1, -(-nbytes // 8))
    buf = np.zeros((n, nwords * 8), np.uint8)
    buf[:, :nbytes] = codes
    if bits is not None and nbytes:
        buf[:, nbytes - 1] &= np.uint8(padding_mask(bits))
    return np.ascontiguousarray(buf.view(np.uint64).T)
