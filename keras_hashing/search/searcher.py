"""The Searcher interface: one exact search structure over a fixed array of packed codes,
one backend per file (``scan.FlatScan``, ``mih.MultiIndex``), picked by name.

Example:
    >>> import numpy as np
    >>> codes = np.packbits(np.eye(8, dtype=np.uint8), axis=1)     # 8 one-hot 8-bit codes
    >>> dist, pos = make_searcher("flat", codes, 8).top_k(codes[:1], 2)
    >>> dist.tolist(), pos.tolist()
    ([[0, 2]], [[0, 1]])
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from keras_hashing.errors import HashingError

METHODS = ("flat", "mih")


class Searcher(Protocol):
    """Exact Hamming search over codes at positions 0..N-1; ties in position order."""

    def top_k(self, queries, k: int) -> tuple:
        """(distances int32 (Q, k'), positions int64 (Q, k')), k' = min(k, N)."""

    def within_radius(self, queries, radius: int) -> tuple:
        """(lims (Q + 1,), distances, positions) of every code within ``radius``, as
        FAISS' range_search lays them out."""


def make_searcher(method: str, codes: np.ndarray, bits: int, tables=None,
                  threads=None) -> Searcher:
    """The ``method`` backend over ``codes``: "flat" (blocked linear scan, ``threads``)
    or "mih" (multi-index hashing over ``tables`` substrings)."""
    if method == "flat":
        from keras_hashing.search.scan import FlatScan

        return FlatScan(codes, bits, threads=threads)
    if method == "mih":
        from keras_hashing.search.mih import MultiIndex

        return MultiIndex(codes, bits, tables=tables)
    raise HashingError(f"unknown index method {method!r}; use one of {METHODS}")
