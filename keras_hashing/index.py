"""HammingIndex: exact Hamming search over bit-packed codes (numpy only, no TensorFlow).

The API follows FAISS's Python one: numpy in, numpy out, no hidden global state.

* ``add(codes, ids=None, labels=None)`` appends packed codes (``codes.pack_bits`` rows);
* ``search(queries, k) -> (distances, ids)``, each of shape (Q, min(k, N));
* ``range_search(queries, r) -> (lims, distances, ids)``: the results of query i are
  ``distances[lims[i]:lims[i+1]]``;
* ``save(path)`` / ``HammingIndex.load(path)``: one self-checking file, written atomically.

Ties in a ranking are broken by position in the index (the order of ``add``): the
ranking is stable, so results are reproducible and do not depend on the sort algorithm.

Example:
    >>> import numpy as np
    >>> from keras_hashing.codes import pack_bits
    >>> index = HammingIndex(bits=8)
    >>> index.add(pack_bits([[0] * 8, [1] * 8, [1] * 4 + [0] * 4]), ids=[10, 11, 12])
    >>> distances, ids = index.search(pack_bits([[1] * 3 + [0] * 5]), k=2)
    >>> distances.tolist(), ids.tolist()
    ([[1, 3]], [[12, 10]])
"""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np

from . import codes as codes_lib
from .errors import HashingError, IndexFileError
from .fileio import atomic_open

MAGIC = b"KHASHIDX"
FORMAT_VERSION = 1
# magic, version, bits, count, labels_kind, labels_dim, meta_len, payload_len, crc32
_HEADER = struct.Struct("<8sHIQBIIQI")
_LABELS_NONE, _LABELS_SINGLE, _LABELS_MULTI = 0, 1, 2
# Cap on the (queries x database) distance block held in memory at once.
_BLOCK_ELEMENTS = 1 << 23


class HammingIndex:
    """Exact exhaustive Hamming index over packed codes of a fixed bit length.

    Args:
        bits: code length K; every added and queried code must be ceil(K/8) bytes.
        metadata: a free JSON-able dict saved with the index (``index build`` records the
            run, dataset, protocol and split the codes came from).
    """

    def __init__(self, bits: int):
        self.bits = codes_lib.check_bits(bits)
        self.code_size = codes_lib.code_bytes(self.bits)
        self.reset()

    # -- contents ---------------------------------------------------------------------
    def reset(self) -> None:
        """Remove every item."""
        self._codes = np.zeros((0, self.code_size), dtype=np.uint8)
        self._ids = np.zeros((0,), dtype=np.int64)
        self._labels = None
        self.metadata = {}

    def __len__(self) -> int:
        return int(self._codes.shape[0])

    @property
    def ntotal(self) -> int:
        return len(self)

    @property
    def codes(self) -> np.ndarray:
        return self._codes

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    @property
    def labels(self):
        """Per-item labels ((N,) ints or (N, C) multi-hot) or None."""
        return self._labels

    def positions_of(self, ids) -> np.ndarray:
        """Positions in the index of the given ids (any shape); unknown ids raise."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(self._ids, kind="stable")
        sorted_ids = self._ids[order]
        where = np.searchsorted(sorted_ids, ids)
        where = np.minimum(where, max(len(sorted_ids) - 1, 0))
        if len(sorted_ids) == 0 or np.any(sorted_ids[where] != ids):
            raise HashingError("some ids are not in the index")
        return order[where]

    def add(self, codes, ids=None, labels=None) -> None:
        """Append packed codes; ids default to positions continuing from the current size."""
        codes = codes_lib.as_packed(codes, self.bits)
        n = codes.shape[0]
        if ids is None:
            ids = np.arange(len(self), len(self) + n, dtype=np.int64)
        else:
            ids = np.asarray(ids)
            if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
                raise HashingError(f"ids must be {n} integers (one per code), got shape "
                                   f"{ids.shape} of {ids.dtype}")
            ids = ids.astype(np.int64)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape[:1] != (n,) or labels.ndim > 2:
                raise HashingError(f"labels must have one row per code ({n}), got shape "
                                   f"{labels.shape}")
            labels = labels.astype(np.uint8 if labels.ndim == 2 else np.int64)
        if len(self) and (labels is None) != (self._labels is None):
            raise HashingError("either every item of an index has labels or none has")
        if self._labels is not None and labels is not None and \
                labels.shape[1:] != self._labels.shape[1:]:
            raise HashingError(f"labels of shape {labels.shape[1:]} do not match the index's "
                               f"{self._labels.shape[1:]}")
        self._codes = np.concatenate([self._codes, codes])
        self._ids = np.concatenate([self._ids, ids])
        if labels is not None:
            self._labels = labels if self._labels is None else np.concatenate(
                [self._labels, labels])

    def remove(self, ids) -> int:
        """Delete the items with these ids; an id not in the index raises (nothing removed).

        Returns the number of items removed.
        """
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        missing = np.setdiff1d(ids, self._ids)
        if missing.size:
            raise HashingError(f"cannot remove ids not in the index: "
                               f"{missing[:10].tolist()}{' ...' if missing.size > 10 else ''}")
        keep = ~np.isin(self._ids, ids)
        self._codes, self._ids = self._codes[keep], self._ids[keep]
        if self._labels is not None:
            self._labels = self._labels[keep]
        return int((~keep).sum())

    # -- search -----------------------------------------------------------------------
    def search(self, queries, k: int):
        """The k nearest codes of each query: (distances int32 (Q, k'), ids int64 (Q, k')).

        k' = min(k, len(self)). Equal distances are ordered by position in the index.
        """
        queries = codes_lib.as_packed(queries, self.bits)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise HashingError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), len(self))
        nq, n = queries.shape[0], len(self)
        out_d = np.zeros((nq, k), dtype=np.int32)
        out_i = np.zeros((nq, k), dtype=np.int64)
        if k == 0:
            return out_d, out_i
        positions = np.arange(n, dtype=np.int64)
        for start in range(0, nq, self._query_block()):
            stop = min(nq, start + self._query_block())
            dist = codes_lib.hamming_distances(queries[start:stop], self._codes, self.bits)
            # A unique key (distance, position) makes the selection exact and stable.
            key = dist.astype(np.int64) * n + positions
            if k < n:
                top = np.argpartition(key, k - 1, axis=1)[:, :k]
            else:
                top = np.broadcast_to(positions, key.shape)
            order = np.take_along_axis(top, np.argsort(
                np.take_along_axis(key, top, axis=1), axis=1), axis=1)
            out_d[start:stop] = np.take_along_axis(dist, order, axis=1)
            out_i[start:stop] = self._ids[order]
        return out_d, out_i

    def range_search(self, queries, radius: int):
        """All codes within Hamming distance ``radius`` (inclusive) of each query.

        Returns (lims, distances, ids) as FAISS does: query i's results are
        ``distances[lims[i]:lims[i+1]]``, sorted by distance then position.
        """
        queries = codes_lib.as_packed(queries, self.bits)
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
            raise HashingError(f"radius must be a non-negative integer, got {radius!r}")
        lims = [0]
        all_d, all_i = [], []
        for start in range(0, queries.shape[0], self._query_block()):
            block = queries[start:start + self._query_block()]
            dist = codes_lib.hamming_distances(block, self._codes, self.bits)
            for row in dist:
                hit = np.flatnonzero(row <= radius)
                hit = hit[np.argsort(row[hit], kind="stable")]
                all_d.append(row[hit])
                all_i.append(self._ids[hit])
                lims.append(lims[-1] + hit.size)
        cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts
               else np.zeros(0, dtype=dt))
        return np.asarray(lims, dtype=np.int64), cat(all_d, np.int32), cat(all_i, np.int64)

    def _query_block(self) -> int:
        return max(1, _BLOCK_ELEMENTS // max(1, len(self)))

    # -- persistence --------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the index to ``path`` atomically (temp file, fsync, rename)."""
        labels_kind, labels_dim, labels_bytes = _LABELS_NONE, 0, b""
        if self._labels is not None:
            if self._labels.ndim == 2:
                labels_kind, labels_dim = _LABELS_MULTI, self._labels.shape[1]
                labels_bytes = self._labels.astype(np.uint8).tobytes()
            else:
                labels_kind, labels_bytes = _LABELS_SINGLE, self._labels.astype("<i8").tobytes()
        meta = json.dumps(self.metadata, sort_keys=True).encode("utf-8")
        payload = (self._codes.tobytes() + self._ids.astype("<i8").tobytes() + labels_bytes
                   + meta)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, self.bits, len(self), labels_kind,
                              labels_dim, len(meta), len(payload), zlib.crc32(payload))
        with atomic_open(path, "wb") as f:
            f.write(header)
            f.write(payload)

    @classmethod
    def load(cls, path) -> "HammingIndex":
        """Read an index written by ``save``; any problem raises IndexFileError naming the file."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise IndexFileError(f"{path}: cannot read index file ({e.strerror})") from None
        if len(data) < _HEADER.size:
            raise IndexFileError(f"{path}: truncated index file ({len(data)} bytes, header "
                                 f"alone is {_HEADER.size}); rebuild it with "
                                 "`keras-hashing index build`")
        magic, version, bits, count, labels_kind, labels_dim, meta_len, payload_len, crc = \
            _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise IndexFileError(f"{path}: not a keras-hashing index (bad magic {magic!r})")
        if version != FORMAT_VERSION:
            raise IndexFileError(f"{path}: index format version {version} is not supported "
                                 f"(this keras-hashing reads version {FORMAT_VERSION})")
        try:
            code_size = codes_lib.code_bytes(bits)
        except HashingError as e:
            raise IndexFileError(f"{path}: bad bit length in header: {e}") from None
        if labels_kind not in (_LABELS_NONE, _LABELS_SINGLE, _LABELS_MULTI):
            raise IndexFileError(f"{path}: unknown labels kind {labels_kind} in header")
        label_size = {_LABELS_NONE: 0, _LABELS_SINGLE: 8, _LABELS_MULTI: labels_dim}[labels_kind]
        expected = count * (code_size + 8 + label_size) + meta_len
        payload = data[_HEADER.size:]
        if payload_len != expected or len(payload) != payload_len:
            raise IndexFileError(
                f"{path}: truncated or corrupt index file: header says {count} codes "
                f"({expected} payload bytes), file holds {len(payload)}")
        if zlib.crc32(payload) != crc:
            raise IndexFileError(f"{path}: checksum mismatch: the file is corrupt")
        index = cls(bits)
        o1, o2 = count * code_size, count * (code_size + 8)
        try:
            meta = json.loads(payload[len(payload) - meta_len:]) if meta_len else {}
        except (ValueError, UnicodeDecodeError, RecursionError):
            meta = None
        if not isinstance(meta, dict):
            raise IndexFileError(f"{path}: the metadata block is not a JSON object")
        index.metadata = meta
        index._codes = np.frombuffer(payload, np.uint8, o1).reshape(count, code_size).copy()
        index._ids = np.frombuffer(payload, "<i8", count, o1).astype(np.int64)
        if labels_kind == _LABELS_SINGLE:
            index._labels = np.frombuffer(payload, "<i8", count, o2).astype(np.int64)
        elif labels_kind == _LABELS_MULTI:
            index._labels = np.frombuffer(payload, np.uint8, count * labels_dim, o2).reshape(
                count, labels_dim).copy()
        return index

    def get_config(self) -> dict:
        return {"bits": self.bits, "ntotal": len(self), "has_labels": self._labels is not None,
                "metadata": dict(self.metadata)}
