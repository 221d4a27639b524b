import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from keras_hashing.codes import pack_bits
from keras_hashing.errors import CodeLengthError, HashingError, IndexFileError
from keras_hashing.index import HammingIndex


def brute_force(q_bits, d_bits, k):
    dist = (q_bits[:, None, :] != d_bits[None, :, :]).sum(-1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), order


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([8, 12, 24, 32, 48, 64, 128, 256]), n=st.integers(1, 60),
       nq=st.integers(1, 5), k=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_search_equals_brute_force_with_stable_ties(bits, n, nq, k, seed):
    rng = np.random.default_rng(seed)
    # few distinct codes -> many ties, which is where ordering bugs hide
    pool = rng.integers(0, 2, size=(4, bits))
    d_bits = pool[rng.integers(0, 4, n)] ^ (rng.random((n, bits)) < 0.05)
    q_bits = rng.integers(0, 2, size=(nq, bits))
    index = HammingIndex(bits)
    index.add(pack_bits(d_bits))
    dist, ids = index.search(pack_bits(q_bits), k)
    exp_d, exp_i = brute_force(q_bits, d_bits, min(k, n))
    np.testing.assert_array_equal(dist, exp_d)
    np.testing.assert_array_equal(ids, exp_i)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([8, 12, 48, 64, 128]), n=st.integers(1, 50),
       r=st.integers(0, 20), seed=st.integers(0, 2**16))
def test_range_search_equals_brute_force(bits, n, r, seed):
    rng = np.random.default_rng(seed)
    d_bits = rng.integers(0, 2, size=(n, bits))
    q_bits = d_bits[: min(3, n)] ^ (rng.random((min(3, n), bits)) < 0.1)
    index = HammingIndex(bits)
    index.add(pack_bits(d_bits), ids=np.arange(n) + 1000)
    lims, dist, ids = index.range_search(pack_bits(q_bits), r)
    full = (q_bits[:, None, :] != d_bits[None, :, :]).sum(-1)
    for i, row in enumerate(full):
        hit = np.flatnonzero(row <= r)
        hit = hit[np.argsort(row[hit], kind="stable")]
        np.testing.assert_array_equal(ids[lims[i]:lims[i + 1]], hit + 1000)
        np.testing.assert_array_equal(dist[lims[i]:lims[i + 1]], row[hit])


def test_large_database_uses_blocks_and_stays_exact():
    rng = np.random.default_rng(1)
    d_bits = rng.integers(0, 2, size=(3000, 16))
    q_bits = rng.integers(0, 2, size=(700, 16))  # 700 x 3000 > one block
    index = HammingIndex(16)
    index.add(pack_bits(d_bits))
    import keras_hashing.index as mod
    old = mod._BLOCK_ELEMENTS
    mod._BLOCK_ELEMENTS = 10_000
    try:
        dist, ids = index.search(pack_bits(q_bits), 5)
    finally:
        mod._BLOCK_ELEMENTS = old
    exp_d, exp_i = brute_force(q_bits, d_bits, 5)
    np.testing.assert_array_equal(dist, exp_d)
    np.testing.assert_array_equal(ids, exp_i)


def _index_with_labels(bits=12, n=20, multi=False):
    rng = np.random.default_rng(0)
    index = HammingIndex(bits)
    labels = rng.integers(0, 2, (n, 5)) if multi else rng.integers(0, 10, n)
    index.add(pack_bits(rng.integers(0, 2, (n, bits))), ids=np.arange(n) * 7, labels=labels)
    index.metadata = {"dataset": "digits", "split": "database"}
    return index


@pytest.mark.parametrize("multi", [False, True])
def test_save_load_roundtrip(tmp_path, multi):
    index = _index_with_labels(multi=multi)
    index.save(tmp_path / "a.khi")
    loaded = HammingIndex.load(tmp_path / "a.khi")
    assert loaded.bits == index.bits and len(loaded) == len(index)
    np.testing.assert_array_equal(loaded.codes, index.codes)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    np.testing.assert_array_equal(loaded.labels, index.labels)
    assert loaded.metadata == {"dataset": "digits", "split": "database"}


def test_add_appends_and_checks_code_length():
    index = HammingIndex(48)
    index.add(pack_bits(np.ones((2, 48))))
    index.add(pack_bits(np.zeros((3, 48))))
    assert len(index) == 5 and index.ids.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(CodeLengthError):
        index.add(pack_bits(np.ones((1, 32))))


CORRUPTIONS = {
    "empty file": lambda b: b"",
    "truncated header": lambda b: b[:10],
    "bad magic": lambda b: b"XXXXXXXX" + b[8:],
    "future version": lambda b: b[:8] + (99).to_bytes(2, "little") + b[10:],
    "zero bits": lambda b: b[:10] + (0).to_bytes(4, "little") + b[14:],
    "count too large": lambda b: b[:14] + (10**6).to_bytes(8, "little") + b[22:],
    "bad labels kind": lambda b: b[:22] + bytes([7]) + b[23:],
    "truncated payload": lambda b: b[:-5],
    "flipped payload byte": lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]),
    "bad meta length": lambda b: b[:27] + (10**6).to_bytes(4, "little") + b[31:],
    "bad payload length": lambda b: b[:31] + (5).to_bytes(8, "little") + b[39:],
    "bad checksum": lambda b: b[:39] + bytes([b[39] ^ 1]) + b[40:],
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_index_file_raises_index_file_error(tmp_path, name):
    path = tmp_path / "a.khi"
    _index_with_labels().save(path)
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
import keras_hashing.fileio as fio
from keras_hashing.index import HammingIndex
real = fio.atomic_open.__wrapped__ if hasattr(fio.atomic_open, '__wrapped__') else None
index = HammingIndex(64)
index.add(np.zeros((200000, 8), np.uint8))
import keras_hashing.index as mod
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


def test_index_module_imports_no_tensorflow():
    code = ("import sys, keras_hashing.index, keras_hashing.evaluation;"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ}).stdout.strip()
    assert out == "False False"


def test_remove_deletes_by_id_and_rejects_unknown_ids():
    index = _index_with_labels(n=10)  # ids 0, 7, 14, ...
    assert index.remove([7, 14]) == 2
    assert len(index) == 8 and 7 not in index.ids and len(index.labels) == 8
    with pytest.raises(HashingError, match=r"not in the index: \[3\]"):
        index.remove([0, 3])
    assert len(index) == 8  # nothing removed on error
