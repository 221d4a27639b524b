"""Multi-index hashing (keras_hashing.search.mih): exact, and faster where probing pays."""

from unittest import mock

import numpy as np
import pytest

from keras_hashing.search import mih
from keras_hashing.codes import pack_bits
from keras_hashing.search.index import HammingIndex
from test_index import brute_force


def test_mih_matches_flat_on_skewed_codes_and_reports_table_memory():
    from keras_hashing.search.mih import MultiIndex

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
    assert multi.searcher().fallbacks > 0
    tables = MultiIndex(pack_bits(d_bits), 64)
    assert tables.tables == round(64 / np.log2(4000))
    assert tables.nbytes < 4000 * 8 * tables.tables + 4 * (1 << 22) * tables.tables


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
    from keras_hashing.search.mih import MultiIndex

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
    from keras_hashing.search.mih import MultiIndex, distinct_codes

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
