"""The exhaustive scan (keras_hashing.search.scan): blocked, threaded, exact."""

import numpy as np
import pytest

from keras_hashing.codes import pack_bits
from keras_hashing.search.index import HammingIndex

from test_index import brute_force


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_database_uses_blocks_and_stays_exact(monkeypatch, threads):
    from keras_hashing.search import scan

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
    from keras_hashing.search import scan

    for nq, threads in [(1, 2), (3, 2), (16, 2), (16, 4), (31, 2), (1000, 2), (70, 1)]:
        blocks = scan.query_blocks(nq, threads)
        assert blocks[0][0] == 0 and blocks[-1][1] == nq
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        sizes = [e - s for s, e in blocks]
        assert max(sizes) <= scan.QUERY_BLOCK and min(sizes) >= 1
        assert len(blocks) >= min(threads, nq)
    assert scan.query_blocks(16, 2) == [(0, 8), (8, 16)]
    assert scan.block_width(8) == 4 * scan.DB_BLOCK and scan.block_width(1) == 8 * scan.DB_BLOCK


def test_flat_scan_answers_the_searcher_protocol_like_brute_force():
    from keras_hashing.search import scan

    rng = np.random.default_rng(5)
    d_bits = rng.integers(0, 2, (300, 20))
    q_bits = rng.integers(0, 2, (9, 20))
    flat = scan.FlatScan(pack_bits(d_bits), 20, threads=2)
    dist, pos = flat.top_k(pack_bits(q_bits), 11)
    exp_d, exp_i = brute_force(q_bits, d_bits, 11)
    np.testing.assert_array_equal(dist, exp_d)
    np.testing.assert_array_equal(pos, exp_i)
    lims, dist, pos = flat.within_radius(pack_bits(q_bits), 7)
    full = (q_bits[:, None, :] != d_bits[None, :, :]).sum(-1)
    for i, row in enumerate(full):
        hit = np.flatnonzero(row <= 7)
        np.testing.assert_array_equal(pos[lims[i]:lims[i + 1]],
                                      hit[np.argsort(row[hit], kind="stable")])


def test_word_columns_clear_the_padding_of_a_database_read_as_it_is():
    """A memory-mapped file is never copied whole; the scan masks its padding per block."""
    from keras_hashing.search import scan

    dirty = np.full((4, 2), 255, np.uint8)  # 12-bit codes, all 16 bits set
    words = scan.word_columns(dirty, 12)
    assert words.shape == (1, 4) and all(bin(int(w)).count("1") == 12 for w in words[0])
    db = scan.Database(dirty, 12, in_memory=False)
    assert int(np.bitwise_count(db.words_block(0, 4)).sum()) == 4 * 12
