import os
import subprocess
import struct
import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from keras_hashing import mih
from keras_hashing.codes import pack_bits
from keras_hashing.errors import CodeLengthError, HashingError, IndexFileError
from keras_hashing.index import HammingIndex


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


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_database_uses_blocks_and_stays_exact(monkeypatch, threads):
    from keras_hashing import scan

    # small blocks: many query and database blocks, first cut-offs and pool re-ranking
    monkeypatch.setattr(scan, "DB_BLOCK", 256)
    monkeypatch.setattr(scan, "QUERY_BLOCK", 7)
    monkeypatch.setattr(scan, "FIRST_CUT_SAMPLE", 64)
    rng = np.random.default_rng(1)
    # 40 distinct codes among 3,000: ties everywhere, also across the threads' ranges
    d_bits = rng.integers(0, 2, size=(40, 16))[rng.integers(0, 40, 3000)]
    index = HammingIndex(16, threads=threads)
    index.add(pack_bits(d_bits))
    # 70 queries: blocks of 7 over 256-code blocks; 3: one block per thread, 3x wider
    for nq in (70, 3):
        q_bits = rng.integers(0, 2, size=(nq, 16))
        for k in (1, 5, 40, 300):
            dist, ids = index.search(pack_bits(q_bits), k)
            exp_d, exp_i = brute_force(q_bits, d_bits, k)
            np.testing.assert_array_equal(dist, exp_d)
            np.testing.assert_array_equal(ids, exp_i)


def test_query_blocks_cover_the_queries_and_give_every_thread_one():
    from keras_hashing import scan

    for nq, threads in [(1, 2), (3, 2), (16, 2), (16, 4), (31, 2), (1000, 2), (70, 1)]:
        blocks = scan.query_blocks(nq, threads)
        assert blocks[0][0] == 0 and blocks[-1][1] == nq
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        sizes = [e - s for s, e in blocks]
        assert max(sizes) <= scan.QUERY_BLOCK and min(sizes) >= 1
        assert len(blocks) >= min(threads, nq)
    assert scan.query_blocks(16, 2) == [(0, 8), (8, 16)]
    assert scan.block_width(8) == 4 * scan.DB_BLOCK and scan.block_width(1) == 8 * scan.DB_BLOCK


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


def _field(name):
    """(offset, struct format) of a header field of the index file."""
    from keras_hashing import index_file as mod

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
from keras_hashing.index import HammingIndex
index = HammingIndex(64)
index.add(np.zeros((200000, 8), np.uint8))
import keras_hashing.index_file as mod
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


def test_mih_matches_flat_on_skewed_codes_and_reports_table_memory():
    from keras_hashing.mih import MultiIndex

    rng = np.random.default_rng(7)
    centres = rng.integers(0, 2, (5, 64))
    d_bits = centres[rng.integers(0, 5, 4000)] ^ (rng.random((4000, 64)) < 0.04)
    q_bits = centres[rng.integers(0, 5, 30)] ^ (rng.random((30, 64)) < 0.04)
    flat, multi = HammingIndex(64), HammingIndex(64, method="mih")
    flat.add(pack_bits(d_bits))
    multi.add(pack_bits(d_bits))
    for fallback in (0.01, 1e9):  # the default sends some skewed queries to the scan
        with mock.patch.object(mih, "SCAN_FALLBACK", fallback):
            for k in (1, 10, 500):
                for a, b in zip(flat.search(pack_bits(q_bits), k),
                                multi.search(pack_bits(q_bits), k)):
                    np.testing.assert_array_equal(a, b)
            for r in (0, 3, 9):
                for a, b in zip(flat.range_search(pack_bits(q_bits), r),
                                multi.range_search(pack_bits(q_bits), r)):
                    np.testing.assert_array_equal(a, b)
    assert multi._multi_index().fallbacks > 0
    tables = MultiIndex(pack_bits(d_bits), 64)
    assert tables.tables == round(64 / np.log2(4000))
    assert tables.nbytes < 4000 * 8 * tables.tables + 4 * (1 << 22) * tables.tables


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


def test_mih_knn_needing_every_code_scans_instead_of_enumerating_huge_rings():
    # one 32-bit table and k = N: the last rings would be C(32, 16) = 6e8 probe values
    rng = np.random.default_rng(9)
    d_bits = rng.integers(0, 2, (50, 32))
    index = HammingIndex(32, method="mih", tables=1)
    index.add(pack_bits(d_bits))
    with mock.patch.object(mih, "SCAN_FALLBACK", 1e9):
        dist, ids = index.search(pack_bits(d_bits[:3]), 50)
        lims, rd, rids = index.range_search(pack_bits(d_bits[:3]), 20)
    exp_d, exp_i = brute_force(d_bits[:3], d_bits, 50)
    np.testing.assert_array_equal(dist, exp_d)
    np.testing.assert_array_equal(ids, exp_i)
    assert lims[-1] == int((exp_d <= 20).sum())


@pytest.mark.parametrize("clock, sent_to_scan",
                         [([0, 10, 10, 11], 16), ([0, 1, 1, 11], 4), ([0, 0], 0)])
def test_mih_knn_sends_the_rest_the_way_that_timed_faster(clock, sent_to_scan):
    # 4 queries probed, 4 scanned, both timed (the fake clock says which was faster);
    # the other 12 go the faster way, and the answer is exact either way. Probing that
    # took no time at all is not raced against the scan: all 20 are probed.
    from keras_hashing.mih import MultiIndex

    rng = np.random.default_rng(10)
    d_bits = rng.integers(0, 2, (300, 32))
    q_bits = d_bits[:20] ^ (rng.random((20, 32)) < 0.1)
    tables = MultiIndex(pack_bits(d_bits), 32)
    ticks = iter(clock)
    with mock.patch.object(mih, "CALIBRATION_QUERIES", 4), \
            mock.patch.object(mih, "SCAN_FALLBACK", 1e9), \
            mock.patch.object(mih.time, "perf_counter", lambda: next(ticks)):
        dist, pos = tables.top_k(pack_bits(q_bits), 7)
    assert tables.fallbacks == sent_to_scan
    exp_d, exp_i = brute_force(q_bits, d_bits, 7)
    np.testing.assert_array_equal(dist, exp_d)
    np.testing.assert_array_equal(pos, exp_i)


def test_mih_knn_over_repeated_codes_probes_the_distinct_ones():
    # a trained model's codes repeat: 20 codes x 300 copies. Over every code, a query's
    # own bucket holds 300+ candidates and passes the scan limit; over the distinct
    # codes it holds a handful, and the answer (ties by position) is the same.
    from keras_hashing.mih import MultiIndex, distinct_codes

    rng = np.random.default_rng(11)
    pool = rng.integers(0, 2, (20, 64))
    d_bits = pool[rng.permutation(np.repeat(np.arange(20), 300))]
    d_bits[::7] ^= (rng.random((len(d_bits[::7]), 64)) < 0.02)  # a few near-copies
    q_bits = pool[rng.integers(0, 20, 40)] ^ (rng.random((40, 64)) < 0.03)
    exp_d, exp_i = brute_force(q_bits, d_bits, 25)
    first, counts, starts, positions = distinct_codes(MultiIndex(pack_bits(d_bits), 64).db)
    assert counts.sum() == len(d_bits) and first.size < 1000
    np.testing.assert_array_equal(d_bits[positions[starts[3]:starts[3] + counts[3]]],
                                  np.broadcast_to(d_bits[first[3]], (counts[3], 64)))
    for share, scanned in ((0.5, False), (0.0, True)):
        # scan limit 5% of N (300 codes): a few buckets of copies pass it, distinct don't
        with mock.patch.object(mih, "DISTINCT_SHARE", share), \
                mock.patch.object(mih, "SCAN_FALLBACK", 0.05):
            tables = MultiIndex(pack_bits(d_bits), 64)
            assert (tables.distinct is not None) == (share > 0)
            dist, pos = tables.top_k(pack_bits(q_bits), 25)
        np.testing.assert_array_equal(dist, exp_d)
        np.testing.assert_array_equal(pos, exp_i)
        assert (tables.fallbacks > 0) == scanned


def test_every_header_byte_is_covered_by_a_checksum(tmp_path):
    from keras_hashing import index_file

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
    from keras_hashing import index_file

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


@pytest.mark.parametrize("method", ["flat", "mih"])
def test_padding_bits_never_count(tmp_path, method):
    """12-bit codes take 2 bytes; the 4 bits past the 12th are not part of the code,
    whether they come from add, a query, or a file written elsewhere."""
    from keras_hashing import index_file

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


def test_loading_a_fifo_is_refused_not_blocked(tmp_path):
    fifo = tmp_path / "pipe.khi"
    os.mkfifo(fifo)
    with pytest.raises(IndexFileError, match="not a regular file"):
        HammingIndex.load(fifo)
