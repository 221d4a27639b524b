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
blocked, threaded kernel of ``keras_hashing.scan``; ``method="mih"`` answers through
multi-index hashing tables (``keras_hashing.mih``), much faster for small radii. Ties in
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

import json
import os
import struct
import zlib

import numpy as np

from . import codes as codes_lib
from . import scan
from .errors import HashingError, IndexFileError
from .fileio import atomic_open

MAGIC = b"KHASHIDX"
FORMAT_VERSION = 2
# magic, version, bits, count, ids_kind, labels_kind, labels_dim, paths_len, meta_len,
# payload_len, crc32 (of the payload: codes | ids | labels | paths JSON | metadata JSON)
_HEADER = struct.Struct("<8sHIQBBIQIQI")
HEADER_FIELDS = ("magic", "version", "bits", "count", "ids_kind", "labels_kind",
                 "labels_dim", "paths_len", "meta_len", "payload_len", "crc32")
_IDS_POSITIONS, _IDS_INT64 = 0, 1
_LABELS_NONE, _LABELS_SINGLE, _LABELS_MULTI = 0, 1, 2
METHODS = ("flat", "mih")
_CRC_CHUNK = 1 << 24


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
        self._scan_db = None  # search structures are rebuilt on the next query
        self._mih = None

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
        out = cls(shards[0].bits, method=method)
        for shard in shards:
            out.add(shard.codes, ids=shard.ids, labels=shard.labels, paths=shard.paths)
        out.metadata = {**shards[0].metadata, "merged_from": [len(s) for s in shards]}
        return out

    # -- search -----------------------------------------------------------------------
    def _database(self):
        if self._scan_db is None:
            self._scan_db = scan.Database(self._codes, self.bits,
                                          in_memory=not isinstance(self._codes, np.memmap))
        return self._scan_db

    def _multi_index(self):
        if self._mih is None:
            from .mih import MultiIndex

            self._mih = MultiIndex(self._codes, self.bits, tables=self.tables)
        return self._mih

    def search(self, queries, k: int):
        """The k nearest codes of each query: (distances int32 (Q, k'), ids int64 (Q, k')).

        k' = min(k, len(self)). Equal distances are ordered by position in the index.
        """
        queries = codes_lib.as_packed(queries, self.bits)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise HashingError(f"k must be a positive integer, got {k!r}")
        if len(self) == 0:
            return (np.zeros((len(queries), 0), np.int32), np.zeros((len(queries), 0), np.int64))
        if self.method == "mih":
            dist, pos = self._multi_index().top_k(queries, k)
        else:
            dist, pos = scan.top_k(self._database(), queries, k, threads=self.threads)
        return dist, self._ids_of(pos)

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
        if self.method == "mih":
            lims, dist, pos = self._multi_index().within_radius(queries, int(radius))
        else:
            lims, dist, pos = scan.within_radius(self._database(), queries, int(radius),
                                                 threads=self.threads)
        return lims, dist, self._ids_of(pos)

    # -- persistence --------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the index to ``path`` atomically (temp file, fsync, rename).

        Sections are streamed with a running CRC32, so saving needs no second copy of
        the codes in memory.
        """
        positional = self._ids is None or bool(np.array_equal(self._ids, np.arange(len(self))))
        labels_kind, labels_dim, labels_bytes = _LABELS_NONE, 0, b""
        if self._labels is not None:
            if self._labels.ndim == 2:
                labels_kind, labels_dim = _LABELS_MULTI, self._labels.shape[1]
                labels_bytes = np.ascontiguousarray(self._labels, np.uint8)
            else:
                labels_kind, labels_bytes = _LABELS_SINGLE, self._labels.astype("<i8")
        paths = (json.dumps(self._paths, ensure_ascii=False).encode("utf-8")
                 if self._paths is not None else b"")
        meta = json.dumps(self.metadata, sort_keys=True).encode("utf-8")
        sections = [np.ascontiguousarray(self._codes, np.uint8),
                    b"" if positional else self._ids.astype("<i8"), labels_bytes, paths, meta]
        payload_len = sum(memoryview(s).nbytes for s in sections)
        crc = 0
        with atomic_open(path, "wb") as f:
            f.write(b"\0" * _HEADER.size)  # rewritten below, once the CRC is known
            for section in sections:
                view = memoryview(section).cast("B")
                for start in range(0, len(view), _CRC_CHUNK):
                    chunk = view[start:start + _CRC_CHUNK]
                    crc = zlib.crc32(chunk, crc)
                    f.write(chunk)
            f.seek(0)
            f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, self.bits, len(self),
                                 _IDS_POSITIONS if positional else _IDS_INT64, labels_kind,
                                 labels_dim, len(paths), len(meta), payload_len, crc))

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
                would read the whole file; pass True to stream it through anyway).
        """
        path = os.fspath(path)
        verify = (not mmap) if verify is None else bool(verify)
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                raw_header = f.read(_HEADER.size)
        except OSError as e:
            raise IndexFileError(f"{path}: cannot read index file ({e.strerror})") from None
        if len(raw_header) < _HEADER.size:
            raise IndexFileError(f"{path}: truncated index file ({size} bytes, header "
                                 f"alone is {_HEADER.size}); rebuild it with "
                                 "`keras-hashing index build`")
        h = dict(zip(HEADER_FIELDS, _HEADER.unpack(raw_header)))
        if h["magic"] != MAGIC:
            raise IndexFileError(f"{path}: not a keras-hashing index (bad magic "
                                 f"{h['magic']!r})")
        if h["version"] != FORMAT_VERSION:
            raise IndexFileError(f"{path}: index format version {h['version']} is not "
                                 f"supported (this keras-hashing reads version "
                                 f"{FORMAT_VERSION}); rebuild it with `keras-hashing index "
                                 "build`")
        try:
            code_size = codes_lib.code_bytes(h["bits"])
        except HashingError as e:
            raise IndexFileError(f"{path}: bad bit length in header: {e}") from None
        if h["ids_kind"] not in (_IDS_POSITIONS, _IDS_INT64):
            raise IndexFileError(f"{path}: unknown ids kind {h['ids_kind']} in header")
        if h["labels_kind"] not in (_LABELS_NONE, _LABELS_SINGLE, _LABELS_MULTI):
            raise IndexFileError(f"{path}: unknown labels kind {h['labels_kind']} in header")
        count = h["count"]
        label_size = {_LABELS_NONE: 0, _LABELS_SINGLE: 8,
                      _LABELS_MULTI: h["labels_dim"]}[h["labels_kind"]]
        id_size = 8 if h["ids_kind"] == _IDS_INT64 else 0
        expected = count * (code_size + id_size + label_size) + h["paths_len"] + h["meta_len"]
        if h["payload_len"] != expected or size - _HEADER.size != expected:
            raise IndexFileError(
                f"{path}: truncated or corrupt index file: header says {count} codes "
                f"({expected} payload bytes), file holds {size - _HEADER.size}")
        if verify:
            crc = _file_crc(path, _HEADER.size)
            if crc != h["crc32"]:
                raise IndexFileError(f"{path}: checksum mismatch: the file is corrupt")
        offsets = np.cumsum([_HEADER.size, count * code_size, count * id_size,
                             count * label_size, h["paths_len"]])
        index = cls(h["bits"], method=method, tables=tables, threads=threads)

        def section(i, dtype, shape):
            if int(np.prod(shape)) == 0:
                return np.zeros(shape, dtype)
            if mmap:
                return np.memmap(path, dtype=dtype, mode="r", offset=int(offsets[i]),
                                 shape=shape)
            with open(path, "rb") as f:
                f.seek(int(offsets[i]))
                return np.frombuffer(f.read(int(np.prod(shape)) * np.dtype(dtype).itemsize),
                                     dtype).reshape(shape).copy()

        index._codes = section(0, np.uint8, (count, code_size))
        index._ids = section(1, "<i8", (count,)) if id_size else None
        if h["labels_kind"] == _LABELS_SINGLE:
            index._labels = section(2, "<i8", (count,))
        elif h["labels_kind"] == _LABELS_MULTI:
            index._labels = section(2, np.uint8, (count, h["labels_dim"]))
        with open(path, "rb") as f:
            f.seek(int(offsets[3]))
            paths_raw = f.read(h["paths_len"])
            meta_raw = f.read(h["meta_len"])
        index.metadata = _json_block(path, meta_raw, dict, "metadata", {})
        paths = _json_block(path, paths_raw, list, "paths", None)
        if paths is not None and len(paths) != count:
            raise IndexFileError(f"{path}: the paths block holds {len(paths)} paths for "
                                 f"{count} codes")
        index._paths = paths
        return index

    def get_config(self) -> dict:
        return {"bits": self.bits, "ntotal": len(self), "method": self.method,
                "has_labels": self._labels is not None, "has_paths": self._paths is not None,
                "metadata": dict(self.metadata)}


def _duplicates(ids) -> list:
    values, counts = np.unique(ids, return_counts=True)
    return values[counts > 1].tolist()


def _file_crc(path, offset) -> int:
    crc = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _json_block(path, raw: bytes, kind, name, empty):
    if not raw:
        return empty
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        value = None
    if not isinstance(value, kind):
        raise IndexFileError(f"{path}: the {name} block is not a JSON "
                             f"{'object' if kind is dict else 'list'}")
    return value
