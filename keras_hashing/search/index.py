"""HammingIndex: exact Hamming search over bit-packed codes (numpy only, no TensorFlow).

The API follows FAISS's Python one: numpy in, numpy out, no hidden global state.

* ``add(codes, ids=None, labels=None, paths=None)`` appends packed codes
  (``codes.pack_bits`` rows) with int64 user ids (default: positions), and optional
  per-item labels and paths;
* ``search(queries, k) -> (distances, ids)``, each of shape (Q, min(k, N));
* ``range_search(queries, r) -> (lims, distances, ids)``: the results of query i are
  ``distances[lims[i]:lims[i+1]]``;
* ``remove(ids)``, ``HammingIndex.merge([a, b, ...])`` (shards with disjoint ids);
* ``save(path)`` / ``HammingIndex.load(path, mmap=False)``: one self-checking file,
  written atomically; ``mmap=True`` maps the codes instead of reading them.

Two search strategies, both exact: ``method="flat"`` (default) scans every code with the
blocked, threaded kernel of ``keras_hashing.search.scan``; ``method="mih"`` answers through
multi-index hashing tables (``keras_hashing.search.mih``), much faster for small radii. Ties in
a ranking are broken by position in the index (the order of ``add``), so results are
reproducible and the same for both strategies.

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

import numpy as np

from keras_hashing import codes as codes_lib
from keras_hashing.search import index_file
from keras_hashing.search.searcher import METHODS, Searcher, make_searcher
from keras_hashing.errors import HashingError

# Metadata that names the model whose codes an index holds (written by `index build`).
ENCODER_KEYS = ("model_sha256", "method", "model")


class HammingIndex:
    """Exact Hamming index over packed codes of a fixed bit length.

    Args:
        bits: code length K; every added and queried code must be ceil(K/8) bytes.
        method: ``"flat"`` (blocked linear scan) or ``"mih"`` (multi-index hashing).
        tables: MIH's number of substring tables (None: round(K / log2 N)).
        threads: search threads (None: ``KH_SEARCH_THREADS`` or every usable CPU).

    Attributes:
        metadata: a free JSON-able dict saved with the index (``index build`` records the
            run, dataset, protocol and split the codes came from).
    """

    def __init__(self, bits: int, method: str = "flat", tables=None, threads=None):
        self.bits = codes_lib.check_bits(bits)
        self.code_size = codes_lib.code_bytes(self.bits)
        if method not in METHODS:
            raise HashingError(f"unknown index method {method!r}; use one of {METHODS}")
        self.method, self.tables, self.threads = method, tables, threads
        self.reset()

    # -- contents ---------------------------------------------------------------------
    def reset(self) -> None:
        """Remove every item."""
        self._codes = np.zeros((0, self.code_size), dtype=np.uint8)
        # None: every id is its position. A memory-mapped index of positional ids then
        # needs no (N,) int64 array in RAM (800 MB for 100M codes) to open or search.
        self._ids = None
        self._labels = None
        self._paths = None
        self.metadata = {}
        self._changed()

    def _changed(self):
        self._search = None  # the searcher is rebuilt on the next query

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
        """(N,) int64 user ids (built on request when they are the positions)."""
        return np.arange(len(self), dtype=np.int64) if self._ids is None else self._ids

    def _ids_of(self, positions) -> np.ndarray:
        return np.asarray(positions, np.int64) if self._ids is None else self._ids[positions]

    def _known(self, ids) -> np.ndarray:
        """Which of ``ids`` (int64 array) are in the index."""
        if self._ids is None:
            return (ids >= 0) & (ids < len(self))
        return np.isin(ids, self._ids)

    @property
    def labels(self):
        """Per-item labels ((N,) ints or (N, C) multi-hot) or None."""
        return self._labels

    @property
    def paths(self):
        """Per-item paths (list of str) or None."""
        return self._paths

    def positions_of(self, ids) -> np.ndarray:
        """Positions in the index of the given ids (any shape); unknown ids raise."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._ids is None:
            if not np.all(self._known(ids)):
                raise HashingError("some ids are not in the index")
            return ids.copy()
        order = np.argsort(self._ids, kind="stable")
        sorted_ids = self._ids[order]
        where = np.searchsorted(sorted_ids, ids)
        where = np.minimum(where, max(len(sorted_ids) - 1, 0))
        if len(sorted_ids) == 0 or np.any(sorted_ids[where] != ids):
            raise HashingError("some ids are not in the index")
        return order[where]

    def labels_of(self, ids):
        """The labels of the items with ``ids`` (any shape; labels keep their own trailing
        axis), or None for an index without labels; unknown ids raise.

        Example:
            >>> index = HammingIndex(8)
            >>> index.add(np.array([[1], [2], [3]], np.uint8), labels=np.array([5, 6, 7]))
            >>> index.labels_of(np.array([[2, 0]])).tolist()
            [[7, 5]]
        """
        return None if self.labels is None else self.labels[self.positions_of(ids)]

    def add(self, codes, ids=None, labels=None, paths=None) -> None:
        """Append packed codes; ids default to positions continuing from the current size.

        Ids must be unique in the index; every item has labels (paths) or none has.
        Nothing changes if any argument is invalid.
        """
        codes = codes_lib.as_packed(codes, self.bits)
        n = codes.shape[0]
        if ids is None:
            start = len(self) if self._ids is None else (
                int(self._ids.max()) + 1 if len(self) else 0)
            ids = np.arange(start, start + n, dtype=np.int64)
        else:
            ids = np.asarray(ids)
            if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
                raise HashingError(f"ids must be {n} integers (one per code), got shape "
                                   f"{ids.shape} of {ids.dtype}")
            ids = ids.astype(np.int64)
            clash = np.unique(ids[self._known(ids)])
            if np.unique(ids).size != n or clash.size:
                dup = clash[:5].tolist() or _duplicates(ids)[:5]
                raise HashingError(f"ids must be unique in the index; repeated: {dup}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape[:1] != (n,) or labels.ndim > 2:
                raise HashingError(f"labels must have one row per code ({n}), got shape "
                                   f"{labels.shape}")
            labels = labels.astype(np.uint8 if labels.ndim == 2 else np.int64)
        if paths is not None:
            paths = [str(p) for p in paths]
            if len(paths) != n:
                raise HashingError(f"paths must have one entry per code ({n}), got "
                                   f"{len(paths)}")
        if len(self):
            if (labels is None) != (self._labels is None):
                raise HashingError("either every item of an index has labels or none has")
            if (paths is None) != (self._paths is None):
                raise HashingError("either every item of an index has a path or none has")
        if self._labels is not None and labels is not None and \
                labels.shape[1:] != self._labels.shape[1:]:
            raise HashingError(f"labels of shape {labels.shape[1:]} do not match the index's "
                               f"{self._labels.shape[1:]}")
        continues_positions = self._ids is None and np.array_equal(
            ids, np.arange(len(self), len(self) + n))
        if not continues_positions:
            self._ids = np.concatenate([self.ids, ids])
        self._codes = np.concatenate([self._codes, codes])
        if labels is not None:
            self._labels = labels if self._labels is None else np.concatenate(
                [self._labels, labels])
        if paths is not None:
            self._paths = paths if self._paths is None else self._paths + paths
        self._changed()

    def remove(self, ids) -> int:
        """Delete the items with these ids; an id not in the index raises (nothing removed).

        Returns the number of items removed.
        """
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        missing = ids[~self._known(ids)]
        if missing.size:
            raise HashingError(f"cannot remove ids not in the index: "
                               f"{missing[:10].tolist()}{' ...' if missing.size > 10 else ''}")
        current = self.ids
        keep = ~np.isin(current, ids)
        self._codes, self._ids = self._codes[keep], current[keep]
        if self._labels is not None:
            self._labels = self._labels[keep]
        if self._paths is not None:
            self._paths = [p for p, k in zip(self._paths, keep) if k]
        self._changed()
        return int((~keep).sum())

    @classmethod
    def merge(cls, shards, method="flat") -> "HammingIndex":
        """One index holding every shard's items in shard order (ids must be disjoint).

        Example:
            >>> a, b = HammingIndex(8), HammingIndex(8)
            >>> a.add(np.zeros((2, 1), np.uint8)); b.add(np.ones((1, 1), np.uint8), ids=[7])
            >>> HammingIndex.merge([a, b]).ids.tolist()
            [0, 1, 7]
        """
        shards = list(shards)
        if not shards:
            raise HashingError("merge needs at least one index")
        bits = {s.bits for s in shards}
        if len(bits) != 1:
            raise HashingError(f"cannot merge indexes of different bit lengths {sorted(bits)}")
        for key in ENCODER_KEYS:  # codes of different models are not comparable
            values = {str(s.metadata[key]) for s in shards if s.metadata.get(key) is not None}
            if len(values) > 1:
                raise HashingError(f"cannot merge indexes built by different models ({key}: "
                                   f"{', '.join(sorted(values))}); rebuild them with one")
        out = cls(shards[0].bits, method=method)
        for shard in shards:
            out.add(shard.codes, ids=shard.ids, labels=shard.labels, paths=shard.paths)
        out.metadata = {**shards[0].metadata, "merged_from": [len(s) for s in shards]}
        return out

    @classmethod
    def merge_files(cls, paths, out) -> "HammingIndex":
        """Merge the index files ``paths`` into the file ``out`` (which may replace an
        index file, never one of the inputs or a file of another kind)."""
        from keras_hashing.fileio import check_output_path

        check_output_path(out, inputs=paths, kind=index_file.is_index_file)
        merged = cls.merge([cls.load(path) for path in paths])
        merged.save(out)
        return merged

    # -- search -----------------------------------------------------------------------
    def searcher(self) -> Searcher:
        """The ``searcher.Searcher`` over the current codes (built on first use, again
        after a change): ``scan.FlatScan`` or ``mih.MultiIndex``."""
        if self._search is None:
            self._search = make_searcher(self.method, self._codes, self.bits,
                                         tables=self.tables, threads=self.threads)
        return self._search

    def search(self, queries, k: int, rerank=None, depth: int | None = None):
        """The k nearest codes of each query: (distances int32 (Q, k'), ids int64 (Q, k')).

        k' = min(k, len(self)). Equal distances are ordered by position in the index.

        Asymmetric re-ranking (Gordo et al. 2014; FAISS "refine", Qdrant "rescore"): with
        ``rerank`` the queries' real-valued signed codes (Q, bits), whose signs are their
        bits (``HashingModel.signed_code``), the Hamming top ``depth`` (default 10 k,
        at least k) are reordered by the score <s, 2b - 1> of each candidate's bits b,
        highest first (ties: Hamming order), and the first k are returned with their
        Hamming distances. The database stays bits; only the query keeps its magnitudes.

        Example:
            >>> index = HammingIndex(4)
            >>> index.add(codes_lib.pack_bits([[0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]]))
            >>> query = np.array([[0.9, 0.05, -0.05, -0.9]], np.float32)  # bits 1100
            >>> index.search(codes_lib.pack_bits(query >= 0), 1)   # flips a sure bit
            (array([[1]], dtype=int32), array([[0]]))
            >>> index.search(codes_lib.pack_bits(query >= 0), 1, rerank=query)  # two unsure
            (array([[2]], dtype=int32), array([[1]]))
        """
        queries = codes_lib.as_packed(queries, self.bits)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise HashingError(f"k must be a positive integer, got {k!r}")
        if rerank is not None:
            signed = np.asarray(rerank, np.float32)
            if signed.shape != (len(queries), self.bits) or not np.all(np.isfinite(signed)):
                raise HashingError(f"rerank needs finite signed codes of shape "
                                   f"({len(queries)}, {self.bits}), got {signed.shape}")
            depth = 10 * int(k) if depth is None else depth
            if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or \
                    depth < k:
                raise HashingError(f"the re-ranking depth must be an integer >= k ({k}), "
                                   f"got {depth!r}")
        if len(self) == 0:
            return (np.zeros((len(queries), 0), np.int32), np.zeros((len(queries), 0), np.int64))
        if rerank is None:
            dist, pos = self.searcher().top_k(queries, k)
            return dist, self._ids_of(pos)
        dist, pos = self.searcher().top_k(queries, int(depth))
        order = asymmetric_order(signed, self._codes, pos, self.bits)[:, :k]
        return (np.take_along_axis(dist, order, axis=1),
                self._ids_of(np.take_along_axis(pos, order, axis=1)))

    def range_search(self, queries, radius: int):
        """All codes within Hamming distance ``radius`` (inclusive) of each query.

        Returns (lims, distances, ids) as FAISS does: query i's results are
        ``distances[lims[i]:lims[i+1]]``, sorted by distance then position.
        """
        queries = codes_lib.as_packed(queries, self.bits)
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
            raise HashingError(f"radius must be a non-negative integer, got {radius!r}")
        if len(self) == 0:
            return np.zeros(len(queries) + 1, np.int64), np.zeros(0, np.int32), np.zeros(
                0, np.int64)
        radius = min(int(radius), self.bits)  # no code is farther than its length
        lims, dist, pos = self.searcher().within_radius(queries, radius)
        return lims, dist, self._ids_of(pos)

    # -- persistence (the file format is keras_hashing.search.index_file) ---------------------
    def save(self, path) -> None:
        """Write the index to ``path`` atomically (temp file, fsync, rename)."""
        positional = self._ids is None or bool(np.array_equal(self._ids, np.arange(len(self))))
        index_file.write(path, self.bits, self._codes, None if positional else self._ids,
                         self._labels, self._paths, self.metadata)

    @classmethod
    def load(cls, path, mmap=False, verify=None, method="flat", tables=None,
             threads=None) -> "HammingIndex":
        """Read an index written by ``save``; any problem raises IndexFileError naming the
        file and what is wrong.

        Args:
            mmap: memory-map the codes (and ids, labels) read-only instead of reading
                them: opening is instant whatever the size, and a search pages in one
                block at a time. ``add``/``remove`` then build an in-memory copy.
            verify: check the payload CRC32 (default: True, except with ``mmap``, where it
                would read the whole file; pass True to stream it through anyway). The
                header's checksum is always checked.
        """
        verify = (not mmap) if verify is None else bool(verify)
        fields = index_file.read(path, mmap=mmap, verify=verify)
        index = cls(fields["bits"], method=method, tables=tables, threads=threads)
        index._codes, index._ids = fields["codes"], fields["ids"]
        index._labels, index._paths = fields["labels"], fields["paths"]
        index.metadata = fields["metadata"]
        return index

    def get_config(self) -> dict:
        return {"bits": self.bits, "ntotal": len(self), "method": self.method,
                "has_labels": self._labels is not None, "has_paths": self._paths is not None,
                "metadata": dict(self.metadata)}


def _duplicates(ids) -> list:
    values, counts = np.unique(ids, return_counts=True)
    return values[counts > 1].tolist()


def asymmetric_order(signed, codes, positions, bits: int) -> np.ndarray:
    """Per query, the order of its candidate ``positions`` (Q, R) by the asymmetric score
    <signed, 2b - 1> (highest first; a stable sort keeps the Hamming order among ties)."""
    order = np.empty(positions.shape, np.int64)
    for start in range(0, len(positions), 256):  # bounded memory: 256 x R x bits floats
        rows = positions[start:start + 256]
        pm1 = codes_lib.unpack_bits(np.asarray(codes)[rows.reshape(-1)], bits).astype(
            np.float32).reshape(*rows.shape, bits) * 2.0 - 1.0
        score = np.einsum("qk,qrk->qr", signed[start:start + 256], pm1)
        order[start:start + 256] = np.argsort(-score, axis=1, kind="stable")
    return order
