"""The index file format (keras_hashing.search.index_file): every corruption is caught."""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from keras_hashing.search.index import HammingIndex
from keras_hashing.errors import IndexFileError

from test_index import _index_with_labels


def _field(name):
    """(offset, struct format) of a header field of the index file."""
    from keras_hashing.search import index_file as mod

    fmt = mod.HEADER.format.lstrip("<")
    sizes = [struct.calcsize("<" + c) for c in ("8s", *fmt[2:])]
    i = mod.HEADER_FIELDS.index(name)
    return sum(sizes[:i]), "<" + ("8s" if i == 0 else fmt[i + 1])


def _set(name, value):
    def corrupt(b):
        off, f = _field(name)
        return b[:off] + struct.pack(f, value) + b[off + struct.calcsize(f):]
    return corrupt


def _flip(name):
    def corrupt(b):
        off, _ = _field(name)
        return b[:off] + bytes([b[off] ^ 1]) + b[off + 1:]
    return corrupt


# One corruption per header field, plus the payload and the JSON blocks.
CORRUPTIONS = {
    "empty file": lambda b: b"",
    "truncated header": lambda b: b[:10],
    "bad magic": _set("magic", b"XXXXXXXX"),
    "future version": _set("version", 99),
    "zero bits": _set("bits", 0),
    "count too large": _set("count", 10**6),
    "bad ids kind": _set("ids_kind", 9),
    "bad labels kind": _set("labels_kind", 7),
    "bad labels dim": _set("labels_dim", 3),
    "bad paths length": _set("paths_len", 10**6),
    "bad meta length": _set("meta_len", 10**6),
    "bad payload length": _set("payload_len", 5),
    "bad checksum": _flip("crc32"),
    "truncated payload": lambda b: b[:-5],
    "flipped payload byte": lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_index_file_raises_index_file_error(tmp_path, name):
    path = tmp_path / "a.khi"
    index = _index_with_labels(multi=True)  # every block present: ids, labels, paths, meta
    index._paths = [f"img/{i}.png" for i in range(len(index))]
    index.metadata = {"run": "r"}
    index.save(path)
    assert HammingIndex.load(path).paths[3] == "img/3.png"
    path.write_bytes(CORRUPTIONS[name](path.read_bytes()))
    with pytest.raises(IndexFileError, match="a.khi"):
        HammingIndex.load(path)


def test_save_killed_midway_leaves_previous_file(tmp_path):
    path = tmp_path / "a.khi"
    _index_with_labels(n=20).save(path)
    before = path.read_bytes()
    # A child process writes a big index and is killed with SIGKILL mid-write.
    script = f"""
import os, signal, numpy as np
from keras_hashing.search.index import HammingIndex
index = HammingIndex(64)
index.add(np.zeros((200000, 8), np.uint8))
import keras_hashing.search.index_file as mod
orig = mod.atomic_open
import contextlib
@contextlib.contextmanager
def dying(path, mode):
    with orig(path, mode) as f:
        class F:
            def write(self, data):
                f.write(data[: len(data) // 2]); f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        yield F()
mod.atomic_open = dying
index.save({str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert path.read_bytes() == before
    assert len(HammingIndex.load(path)) == 20


def test_every_header_byte_is_covered_by_a_checksum(tmp_path):
    from keras_hashing.search import index_file

    path = tmp_path / "a.khi"
    index = _index_with_labels(multi=False)
    index.save(path)
    raw = path.read_bytes()
    for offset in range(index_file.HEADER.size):
        for bit in (0, 7):
            path.write_bytes(raw[:offset] + bytes([raw[offset] ^ (1 << bit)])
                             + raw[offset + 1:])
            for mmap in (False, True):  # the header is checked even without verify
                with pytest.raises(IndexFileError, match="a.khi"):
                    HammingIndex.load(path, mmap=mmap)


def test_version_2_files_are_still_read(tmp_path):
    from keras_hashing.search import index_file

    path = tmp_path / "a.khi"
    index = _index_with_labels(multi=False)
    index.save(path)
    raw = path.read_bytes()
    head = index_file.HEADER.unpack(raw[:index_file.HEADER.size])
    v2 = index_file._V2_HEADER.pack(head[0], 2, *head[2:-1]) + raw[index_file.HEADER.size:]
    path.write_bytes(v2)
    loaded = HammingIndex.load(path)
    np.testing.assert_array_equal(loaded.codes, index.codes)
    np.testing.assert_array_equal(loaded.labels, index.labels)


def test_loading_a_fifo_is_refused_not_blocked(tmp_path):
    fifo = tmp_path / "pipe.khi"
    os.mkfifo(fifo)
    with pytest.raises(IndexFileError, match="not a regular file"):
        HammingIndex.load(fifo)
