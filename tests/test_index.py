import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from keras_hashing.search import mih
from keras_hashing.codes import pack_bits
from keras_hashing.errors import CodeLengthError, HashingError, IndexFileError
from keras_hashing.search.index import HammingIndex


def brute_force(q_bits, d_bits, k):
    dist = (q_bits[:, None, :] != d_bits[None, :, :]).sum(-1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), order


BITS = [8, 12, 24, 32, 48, 64, 128, 256]


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(BITS), n=st.integers(1, 60), nq=st.integers(1, 5),
       k=st.integers(1, 70), seed=st.integers(0, 2**16), method=st.sampled_from(["flat", "mih"]),
       tables=st.sampled_from([None, 1, 2, 3, 5]), fallback=st.sampled_from([0.0, 1e9]),
       distinct_share=st.sampled_from([0.0, 1.0]))
def test_search_equals_brute_force_with_stable_ties(bits, n, nq, k, seed, method, tables,
                                                    fallback, distinct_share):
    rng = np.random.default_rng(seed)
    # few distinct codes -> many ties, which is where ordering bugs hide
    pool = rng.integers(0, 2, size=(4, bits))
    d_bits = pool[rng.integers(0, 4, n)] ^ (rng.random((n, bits)) < 0.05)
    q_bits = rng.integers(0, 2, size=(nq, bits))
    if tables and bits / tables > 32:
        tables = None  # MIH substrings are at most 32 bits
    index = HammingIndex(bits, method=method, tables=tables)
    index.add(pack_bits(d_bits))
    # fallback 0: every MIH query goes to the scan; 1e9: none does (MIH's own path).
    # distinct share 1: k-NN probes tables of the distinct codes; 0: of every code.
    with mock.patch.object(mih, "SCAN_FALLBACK", fallback), \
            mock.patch.object(mih, "DISTINCT_SHARE", distinct_share):
        dist, ids = index.search(pack_bits(q_bits), k)
    exp_d, exp_i = brute_force(q_bits, d_bits, min(k, n))
    np.testing.assert_array_equal(dist, exp_d)
    np.testing.assert_array_equal(ids, exp_i)


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(BITS), n=st.integers(1, 50), r=st.integers(0, 20),
       seed=st.integers(0, 2**16), method=st.sampled_from(["flat", "mih"]),
       fallback=st.sampled_from([0.0, 1e9]))
def test_range_search_equals_brute_force(bits, n, r, seed, method, fallback):
    rng = np.random.default_rng(seed)
    d_bits = rng.integers(0, 2, size=(n, bits))
    q_bits = d_bits[: min(3, n)] ^ (rng.random((min(3, n), bits)) < 0.1)
    index = HammingIndex(bits, method=method)
    index.add(pack_bits(d_bits), ids=np.arange(n) + 1000)
    with mock.patch.object(mih, "SCAN_FALLBACK", fallback):
        lims, dist, ids = index.range_search(pack_bits(q_bits), r)
    full = (q_bits[:, None, :] != d_bits[None, :, :]).sum(-1)
    for i, row in enumerate(full):
        hit = np.flatnonzero(row <= r)
        hit = hit[np.argsort(row[hit], kind="stable")]
        np.testing.assert_array_equal(ids[lims[i]:lims[i + 1]], hit + 1000)
        np.testing.assert_array_equal(dist[lims[i]:lims[i + 1]], row[hit])


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


def test_index_module_imports_no_tensorflow():
    code = ("import sys, keras_hashing.search.index, keras_hashing.evaluation;"
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


def test_mmap_load_searches_like_the_in_memory_index(tmp_path):
    rng = np.random.default_rng(8)
    index = HammingIndex(48)
    index.add(pack_bits(rng.integers(0, 2, (5000, 48))), ids=np.arange(5000) * 3,
              labels=rng.integers(0, 10, 5000))
    index.save(tmp_path / "m.khi")
    mapped = HammingIndex.load(tmp_path / "m.khi", mmap=True)
    assert isinstance(mapped.codes, np.memmap) and isinstance(mapped.ids, np.memmap)
    q = pack_bits(rng.integers(0, 2, (20, 48)))
    for a, b in zip(index.search(q, 7), mapped.search(q, 7)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mapped.labels, index.labels)
    # mmap skips the CRC unless asked; a flipped code byte is then caught by verify=True
    raw = bytearray((tmp_path / "m.khi").read_bytes())
    raw[100] ^= 0xFF
    (tmp_path / "m.khi").write_bytes(bytes(raw))
    HammingIndex.load(tmp_path / "m.khi", mmap=True)
    with pytest.raises(IndexFileError, match="checksum"):
        HammingIndex.load(tmp_path / "m.khi", mmap=True, verify=True)


def test_mapped_index_of_positional_ids_allocates_no_id_array(tmp_path):
    """Opening a memory-mapped index whose ids are its positions must not build an (N,)
    int64 array (800 MB at 100M codes); ids come back right all the same."""
    import tracemalloc

    n = 200_000
    rng = np.random.default_rng(3)
    index = HammingIndex(64)
    index.add(rng.integers(0, 256, (n, 8), dtype=np.uint8))
    index.save(tmp_path / "p.khi")
    tracemalloc.start()
    try:
        mapped = HammingIndex.load(tmp_path / "p.khi", mmap=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * 8 // 10, f"opening allocated {peak} bytes"
    q = rng.integers(0, 256, (3, 8), dtype=np.uint8)
    dist, ids = mapped.search(q, 5)
    ref_dist, ref_ids = index.search(q, 5)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)
    assert mapped.ids.tolist() == list(range(n))
    np.testing.assert_array_equal(mapped.positions_of([5, 0, n - 1]), [5, 0, n - 1])
    with pytest.raises(HashingError, match="not in the index"):
        mapped.positions_of([n])
    # appending continues the positions; an explicit id, or a removal, makes ids explicit
    mapped.add(q[:1])
    assert mapped.ids[-1] == n
    with pytest.raises(HashingError, match="unique"):
        mapped.add(q[:1], ids=[7])
    mapped.add(q[:1], ids=[10 * n])
    assert mapped.ids[-2:].tolist() == [n, 10 * n]
    assert mapped.remove([0, 10 * n]) == 2
    assert mapped.ids[:2].tolist() == [1, 2] and len(mapped) == n


def test_merge_shards_and_reject_clashing_ids(tmp_path):
    a, b = HammingIndex(16), HammingIndex(16)
    a.add(pack_bits(np.zeros((3, 16))), labels=[1, 2, 3], paths=["a0", "a1", "a2"])
    b.add(pack_bits(np.ones((2, 16))), ids=[100, 101], labels=[4, 5], paths=["b0", "b1"])
    merged = HammingIndex.merge([a, b])
    assert merged.ids.tolist() == [0, 1, 2, 100, 101]
    assert merged.paths == ["a0", "a1", "a2", "b0", "b1"]
    assert merged.labels.tolist() == [1, 2, 3, 4, 5]
    merged.save(tmp_path / "m.khi")
    assert HammingIndex.load(tmp_path / "m.khi").paths[4] == "b1"
    with pytest.raises(HashingError, match="unique"):
        HammingIndex.merge([a, a])
    with pytest.raises(HashingError, match="bit lengths"):
        HammingIndex.merge([a, HammingIndex(8)])


def test_add_rejects_duplicate_ids_and_mismatched_paths():
    index = HammingIndex(8)
    index.add(pack_bits(np.zeros((2, 8))), ids=[5, 6])
    with pytest.raises(HashingError, match="repeated: \\[6\\]"):
        index.add(pack_bits(np.zeros((1, 8))), ids=[6])
    with pytest.raises(HashingError, match="repeated: \\[9\\]"):
        index.add(pack_bits(np.zeros((2, 8))), ids=[9, 9])
    with pytest.raises(HashingError, match="path"):
        index.add(pack_bits(np.zeros((1, 8))), paths=["x"])
    assert len(index) == 2
    index.add(pack_bits(np.zeros((1, 8))))
    assert index.ids.tolist() == [5, 6, 7]  # default ids continue after the largest


@pytest.mark.parametrize("method", ["flat", "mih"])
def test_padding_bits_never_count(tmp_path, method):
    """12-bit codes take 2 bytes; the 4 bits past the 12th are not part of the code,
    whether they come from add, a query, or a file written elsewhere."""
    from keras_hashing.search import index_file

    zeros = np.zeros((5, 2), np.uint8)
    dirty = np.array([[0, 15]] * 5, np.uint8)  # padding bits set
    for codes, query in ((zeros, [[0, 15]]), (dirty, [[0, 0]]), (dirty, [[255, 255]])):
        index = HammingIndex(12, method=method)
        index.add(codes)
        dist, ids = index.search(np.array(query, np.uint8), k=3)
        expected = 12 if query == [[255, 255]] else 0
        assert dist.tolist() == [[expected] * 3] and ids.tolist() == [[0, 1, 2]]
        lims, dist, _ = index.range_search(np.array(query, np.uint8), 0)
        assert lims.tolist() == [0, 0 if expected else 5]
    path = tmp_path / "dirty.khi"
    index_file.write(path, 12, dirty, None, None, None, {})  # another writer's file
    for mmap in (False, True):
        loaded = HammingIndex.load(path, mmap=mmap, method=method)
        assert loaded.search(np.zeros((1, 2), np.uint8), k=2)[0].tolist() == [[0, 0]]


@pytest.mark.parametrize("method", ["flat", "mih"])
def test_radius_above_the_code_length_returns_everything(method):
    index = HammingIndex(16, method=method)
    index.add(pack_bits(np.random.default_rng(0).integers(0, 2, (50, 16))))
    lims, dist, ids = index.range_search(np.zeros((2, 2), np.uint8), 10**12)
    assert lims.tolist() == [0, 50, 100] and sorted(ids[:50].tolist()) == list(range(50))


@pytest.mark.parametrize("method", ["flat", "mih"])
def test_rerank_orders_the_hamming_top_r_by_the_asymmetric_score(method):
    rng = np.random.default_rng(0)
    bits, n, k, depth = 16, 400, 5, 40
    index = HammingIndex(bits, method=method)
    index.add(pack_bits(rng.integers(0, 2, (n, bits))))
    signed = rng.normal(size=(7, bits)).astype(np.float32)
    queries = pack_bits(signed >= 0)
    dist, ids = index.search(queries, k, rerank=signed, depth=depth)
    # independently: the Hamming top `depth` (ties by position), then the highest scores
    db = np.unpackbits(index.codes, axis=1, count=bits).astype(np.float32)
    q_bits = (signed >= 0).astype(np.float32)
    hamming = (q_bits[:, None, :] != db[None]).sum(-1)
    for i in range(len(signed)):
        candidates = sorted(range(n), key=lambda j: (hamming[i, j], j))[:depth]
        score = {j: float(signed[i] @ (2 * db[j] - 1)) for j in candidates}
        expected = sorted(candidates, key=lambda j: (-score[j], candidates.index(j)))[:k]
        assert ids[i].tolist() == expected
        assert dist[i].tolist() == [int(hamming[i, j]) for j in expected]
    # without re-ranking, the Hamming order; a depth below k is refused
    assert index.search(queries, k)[1][:, 0].tolist() == [
        sorted(range(n), key=lambda j: (hamming[i, j], j))[0] for i in range(len(signed))]
    with pytest.raises(HashingError, match="depth"):
        index.search(queries, k, rerank=signed, depth=k - 1)
    with pytest.raises(HashingError, match="shape"):
        index.search(queries, k, rerank=signed[:, :4])
