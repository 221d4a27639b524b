"""The index file format (``.khi``): one self-checking file per ``HammingIndex``.

    header   68 bytes, little-endian: magic "KHASHIDX", format version, bits, count,
             ids kind, labels kind, labels dim, paths length, metadata length,
             payload length, payload CRC32, header CRC32 (of the 64 bytes before it)
    payload  codes (count x ceil(bits / 8) uint8, padding bits zero) | ids (int64; absent
             when every id is its position) | labels (int64, or uint8 multi-hot rows) |
             paths (JSON list) | metadata (JSON object)

The header checksum is always verified (it costs nothing); the payload's on request,
since it reads the whole file. Version 2 files (the same without the header checksum)
are still read.

Example:
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "a.khi")
    >>> write(path, 12, np.zeros((3, 2), np.uint8), None, None, None, {"run": "r"})
    >>> fields = read(path)
    >>> fields["bits"], fields["codes"].shape, fields["metadata"]
    (12, (3, 2), {'run': 'r'})
"""

from __future__ import annotations

import json
import os
import stat
import struct
import zlib

import numpy as np

from keras_hashing import codes as codes_lib
from keras_hashing.errors import HashingError, IndexFileError
from keras_hashing.fileio import atomic_open, file_starts_with

MAGIC = b"KHASHIDX"
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
_V2_HEADER = struct.Struct("<8sHIQBBIQIQI")
HEADER = struct.Struct("<8sHIQBBIQIQII")
HEADER_FIELDS = ("magic", "version", "bits", "count", "ids_kind", "labels_kind",
                 "labels_dim", "paths_len", "meta_len", "payload_len", "crc32", "header_crc32")
IDS_POSITIONS, IDS_INT64 = 0, 1
LABELS_NONE, LABELS_SINGLE, LABELS_MULTI = 0, 1, 2
_CRC_CHUNK = 1 << 24


def write(path, bits: int, codes, ids, labels, paths, metadata: dict) -> None:
    """Write an index file atomically; ``ids`` None means positional ids.

    Sections are streamed with a running CRC32, so writing needs no second copy of the
    codes in memory.
    """
    labels_kind, labels_dim, labels_bytes = LABELS_NONE, 0, b""
    if labels is not None:
        if labels.ndim == 2:
            labels_kind, labels_dim = LABELS_MULTI, labels.shape[1]
            labels_bytes = np.ascontiguousarray(labels, np.uint8)
        else:
            labels_kind, labels_bytes = LABELS_SINGLE, labels.astype("<i8")
    paths_raw = json.dumps(paths, ensure_ascii=False).encode("utf-8") if paths is not None \
        else b""
    try:
        meta = json.dumps(metadata, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise HashingError(f"index metadata must be JSON-able: {e}") from None
    sections = [np.ascontiguousarray(codes, np.uint8),
                b"" if ids is None else ids.astype("<i8"), labels_bytes, paths_raw, meta]
    payload_len = sum(memoryview(s).nbytes for s in sections)
    crc = 0
    with atomic_open(path, "wb") as f:
        f.write(b"\0" * HEADER.size)  # rewritten below, once the CRC is known
        for section in sections:
            if not memoryview(section).nbytes:
                continue  # an empty index: nothing to write (and nothing to cast)
            view = memoryview(section).cast("B")
            for start in range(0, len(view), _CRC_CHUNK):
                chunk = view[start:start + _CRC_CHUNK]
                crc = zlib.crc32(chunk, crc)
                f.write(chunk)
        f.seek(0)
        f.write(_pack_header(bits, len(codes), IDS_POSITIONS if ids is None else IDS_INT64,
                             labels_kind, labels_dim, len(paths_raw), len(meta), payload_len,
                             crc))


def _pack_header(*fields) -> bytes:
    head = HEADER.pack(MAGIC, FORMAT_VERSION, *fields, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head))


def read_header(path) -> dict:
    """The checked header of an index file, with ``size`` (file bytes), ``header_size``
    and ``offsets`` of the payload sections; any problem raises IndexFileError."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            raise IndexFileError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            raw = f.read(HEADER.size)
    except OSError as e:
        raise IndexFileError(f"{path}: cannot read index file ({e.strerror})") from None
    size = info.st_size
    if raw[:8] != MAGIC[:len(raw[:8])]:
        raise IndexFileError(f"{path}: not a keras-hashing index (bad magic {raw[:8]!r})")
    if len(raw) < 10:
        raise IndexFileError(f"{path}: truncated index file ({size} bytes); rebuild it with "
                             "`keras-hashing index build`")
    version = struct.unpack_from("<H", raw, 8)[0]
    if version not in READABLE_VERSIONS:
        raise IndexFileError(f"{path}: index format version {version} is not supported "
                             f"(this keras-hashing reads versions {READABLE_VERSIONS}); "
                             "rebuild it with `keras-hashing index build`")
    if len(raw) < (_V2_HEADER.size if version == 2 else HEADER.size):
        raise IndexFileError(f"{path}: truncated index file ({size} bytes, shorter than its "
                             "header); rebuild it with `keras-hashing index build`")
    if version == 2:
        h = dict(zip(HEADER_FIELDS, _V2_HEADER.unpack(raw[:_V2_HEADER.size])))
        h["header_crc32"], header_size = None, _V2_HEADER.size
    else:
        h = dict(zip(HEADER_FIELDS, HEADER.unpack(raw)))
        if zlib.crc32(raw[:-4]) != h["header_crc32"]:
            raise IndexFileError(f"{path}: header checksum mismatch: the file is corrupt")
        header_size = HEADER.size
    try:
        code_size = codes_lib.code_bytes(h["bits"])
    except HashingError as e:
        raise IndexFileError(f"{path}: bad bit length in header: {e}") from None
    if h["ids_kind"] not in (IDS_POSITIONS, IDS_INT64):
        raise IndexFileError(f"{path}: unknown ids kind {h['ids_kind']} in header")
    if h["labels_kind"] not in (LABELS_NONE, LABELS_SINGLE, LABELS_MULTI):
        raise IndexFileError(f"{path}: unknown labels kind {h['labels_kind']} in header")
    count = h["count"]
    label_size = {LABELS_NONE: 0, LABELS_SINGLE: 8, LABELS_MULTI: h["labels_dim"]}[
        h["labels_kind"]]
    id_size = 8 if h["ids_kind"] == IDS_INT64 else 0
    expected = count * (code_size + id_size + label_size) + h["paths_len"] + h["meta_len"]
    if h["payload_len"] != expected or size - header_size != expected:
        raise IndexFileError(
            f"{path}: truncated or corrupt index file: header says {count} codes "
            f"({expected} payload bytes), file holds {size - header_size}")
    h.update(size=size, header_size=header_size, code_size=code_size, label_size=label_size,
             id_size=id_size,
             offsets=[int(o) for o in np.cumsum([header_size, count * code_size,
                                                 count * id_size, count * label_size,
                                                 h["paths_len"]])])
    return h


def read(path, mmap=False, verify=True) -> dict:
    """The sections of an index file: bits, codes, ids (None: positional), labels, paths,
    metadata; with ``mmap`` the arrays map the file read-only. Any problem raises
    IndexFileError naming the file."""
    path = os.fspath(path)
    h = read_header(path)
    if verify and _file_crc(path, h["header_size"]) != h["crc32"]:
        raise IndexFileError(f"{path}: checksum mismatch: the file is corrupt")
    count, offsets = h["count"], h["offsets"]

    def section(i, dtype, shape):
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype)
        if mmap:
            return np.memmap(path, dtype=dtype, mode="r", offset=offsets[i], shape=shape)
        with open(path, "rb") as f:
            f.seek(offsets[i])
            return np.frombuffer(f.read(int(np.prod(shape)) * np.dtype(dtype).itemsize),
                                 dtype).reshape(shape).copy()

    codes = section(0, np.uint8, (count, h["code_size"]))
    if not mmap:  # a file from elsewhere may set them; a mapped one is masked by the scan
        codes = codes_lib.mask_padding(codes, h["bits"])
    labels = None
    if h["labels_kind"] == LABELS_SINGLE:
        labels = section(2, "<i8", (count,))
    elif h["labels_kind"] == LABELS_MULTI:
        labels = section(2, np.uint8, (count, h["labels_dim"]))
    with open(path, "rb") as f:
        f.seek(offsets[3])
        paths_raw = f.read(h["paths_len"])
        meta_raw = f.read(h["meta_len"])
    paths = _json_block(path, paths_raw, list, "paths", None)
    if paths is not None and (len(paths) != count or
                              not all(isinstance(p, str) for p in paths)):
        raise IndexFileError(f"{path}: the paths block does not hold {count} path strings")
    return {"bits": h["bits"], "codes": codes,
            "ids": section(1, "<i8", (count,)) if h["id_size"] else None,
            "labels": labels, "paths": paths,
            "metadata": _json_block(path, meta_raw, dict, "metadata", {}),
            "version": h["version"]}


def is_index_file(path) -> bool:
    """Whether ``path`` starts like an index file (what outputs may overwrite)."""
    return file_starts_with(MAGIC)(path)


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
