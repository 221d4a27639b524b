import numpy as np
import pytest

from keras_hashing import evaluation as ev
from keras_hashing.codes import pack_bits
from keras_hashing.errors import HashingError


def codes_at_distances(distances, bits=8):
    """Query = all zeros; database item i has its first distances[i] bits set."""
    d = np.zeros((len(distances), bits), np.uint8)
    for i, k in enumerate(distances):
        d[i, :k] = 1
    return pack_bits(np.zeros((1, bits))), pack_bits(d)


def test_map_with_ties_broken_by_position():
    # distances [1, 0, 1, 0]: ranking by (distance, position) = items 1, 3, 0, 2
    q, db = codes_at_distances([1, 0, 1, 0])
    # relevant: items 0 and 3 -> ranks 2 (item 3) and 3 (item 0)
    m = ev.mean_average_precision(q, db, [1], [1, 0, 0, 1], bits=8)
    assert m == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_map_at_k_normalises_by_relevant_in_top_k():
    q, db = codes_at_distances([0, 1, 2, 3, 4])
    labels = [0, 1, 1, 0, 1]  # relevant (label 1) at ranks 2, 3, 5
    assert ev.mean_average_precision(q, db, [1], labels, 8, k=3) == pytest.approx(
        (1 / 2 + 2 / 3) / 2)
    assert ev.mean_average_precision(q, db, [1], labels, 8) == pytest.approx(
        (1 / 2 + 2 / 3 + 3 / 5) / 3)


def test_query_without_relevant_items_counts_as_zero():
    q1, db = codes_at_distances([0, 1, 2])
    q = np.concatenate([q1, q1])
    # query 0 (label 5) has no relevant item at all; query 1 (label 0) finds item 0 first
    m = ev.mean_average_precision(q, db, [5, 0], [0, 1, 2], 8)
    assert m == pytest.approx((0 + 1) / 2)
    # in the top 1, a relevant item at rank 2 does not count: AP 0
    q, db = codes_at_distances([0, 1])
    assert ev.mean_average_precision(q, db, [1], [0, 1], 8, k=1) == 0.0


def test_precision_at_radius_empty_result_scores_zero():
    q, db = codes_at_distances([0, 2, 3, 5])
    labels = [1, 0, 1, 1]
    assert ev.precision_at_radius(q, db, [1], labels, 8, radius=2) == pytest.approx(1 / 2)
    q, db = codes_at_distances([3, 4])
    assert ev.precision_at_radius(q, db, [1], [1, 1], 8, radius=2) == 0.0


def test_precision_at_k_and_pr_curve():
    q, db = codes_at_distances([0, 1, 1, 3])
    labels = [1, 0, 1, 1]
    np.testing.assert_allclose(ev.precision_at_k(q, db, [1], labels, 8, ks=(1, 2, 4)),
                               [1, 1 / 2, 3 / 4])
    radii, precision, recall = ev.precision_recall_curve(q, db, [1], labels, 8)
    assert len(radii) == 9
    np.testing.assert_allclose(precision[:4], [1, 2 / 3, 2 / 3, 3 / 4])
    np.testing.assert_allclose(recall[:4], [1 / 3, 2 / 3, 2 / 3, 1])


def test_multi_label_relevance_is_any_shared_label():
    rel = ev.relevance(np.array([[1, 0, 1]]), np.array([[0, 0, 1], [0, 1, 0], [1, 1, 1]]))
    assert rel.tolist() == [[True, False, True]]


def average_precision(rel, cut):
    """AP of a ranked relevance list within its first ``cut`` ranks, from the definition."""
    hits, total = 0, 0.0
    for rank, r in enumerate(rel[:cut], 1):
        if r:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def brute_force_metrics(q_bits, d_bits, ql, dl, k):
    dist = (q_bits[:, None, :] != d_bits[None, :, :]).sum(-1)
    aps, aps_k, prs = [], [], []
    for i in range(len(q_bits)):
        order = sorted(range(len(d_bits)), key=lambda j: (dist[i, j], j))
        rel = [ql[i] == dl[j] for j in order]
        aps.append(average_precision(rel, len(rel)))
        aps_k.append(average_precision(rel, k))
        within = [j for j in range(len(d_bits)) if dist[i, j] <= 2]
        prs.append(sum(ql[i] == dl[j] for j in within) / len(within) if within else 0.0)
    return np.mean(aps), np.mean(aps_k), np.mean(prs)


@pytest.mark.parametrize("seed", range(4))
def test_metrics_match_independent_brute_force(seed):
    rng = np.random.default_rng(seed)
    bits = 12
    d_bits = rng.integers(0, 2, (120, bits))
    q_bits = rng.integers(0, 2, (15, bits))
    ql, dl = rng.integers(0, 4, 15), rng.integers(0, 4, 120)
    m = ev.retrieval_metrics(pack_bits(q_bits), pack_bits(d_bits), ql, dl, bits,
                             map_at=(None, 30), radius=2)
    exp_all, exp_k, exp_pr = brute_force_metrics(q_bits, d_bits, ql, dl, 30)
    assert m["map_all"] == pytest.approx(exp_all, abs=1e-9)
    assert m["map_30"] == pytest.approx(exp_k, abs=1e-9)
    assert m["p_r2"] == pytest.approx(exp_pr, abs=1e-9)


def test_code_statistics_detect_collapse():
    collapsed = np.ones((50, 16), np.uint8)
    s = ev.code_statistics(collapsed)
    assert s["constant_bits"] == 16 and s["unique_code_fraction"] == pytest.approx(1 / 50)
    healthy = np.random.default_rng(0).integers(0, 2, (500, 16))
    s = ev.code_statistics(healthy)
    assert s["constant_bits"] == 0 and s["balanced_bit_fraction"] == 1.0
    assert s["mean_bit_correlation"] < 0.1


def test_mismatched_labels_raise():
    q, db = codes_at_distances([0, 1])
    with pytest.raises(HashingError):
        ev.retrieval_metrics(q, db, [1, 2], [0, 1], 8)


def test_class_distance_spread_golden_values():
    # class 0: 00000000, 00000011 (2 apart); class 1: 11111111, 00000001 (7 apart)
    codes = pack_bits(np.array([[0] * 8, [0] * 6 + [1] * 2, [1] * 8, [0] * 7 + [1]]))
    spread = ev.class_distance_spread(codes, np.array([0, 0, 1, 1]), 8)
    # within: 2, 7 -> p90 = 2 + 0.9 * 5 = 6.5; between: 8, 1, 6, 1 -> 3 of 4 below 6.5
    assert spread == {"items": 4, "within_mean": 4.5, "within_p90": 6.5, "between_mean": 4.0,
                      "between_p10": 1.0, "overlap": 0.75}
    # multi-hot: items 0 and 2 now share label 2, so their pair (8 apart) is within
    multi = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1], [0, 1, 0]])
    assert ev.class_distance_spread(codes, multi, 8)["within_mean"] == pytest.approx(17 / 3)
    assert ev.class_distance_spread(codes, np.zeros(4, int), 8)["overlap"] is None


def test_map_by_class_weights_back_to_the_overall_map_and_refuses_multi_label():
    rng = np.random.default_rng(3)
    db_labels, q_labels = rng.integers(0, 4, 300), rng.integers(0, 4, 40)
    # codes that carry the label in their first two bits, noise in the rest
    def codes(labels):
        bits = rng.integers(0, 2, (len(labels), 16))
        bits[:, 0], bits[:, 1] = labels & 1, labels >> 1
        return pack_bits(bits)
    db, q = codes(db_labels), codes(q_labels)
    by_class = ev.map_by_class(q, db, q_labels, db_labels, 16)
    assert sorted(by_class) == [0, 1, 2, 3]
    counts = np.bincount(q_labels, minlength=4)
    weighted = sum(by_class[c] * counts[c] for c in by_class) / counts.sum()
    assert weighted == pytest.approx(
        ev.mean_average_precision(q, db, q_labels, db_labels, 16))
    with pytest.raises(HashingError, match="single-label"):
        ev.map_by_class(q, db, np.eye(4)[q_labels], np.eye(4)[db_labels], 16)


@pytest.mark.parametrize("multi_label", [False, True])
def test_asymmetric_map_is_the_map_of_the_score_ranking(multi_label):
    rng = np.random.default_rng(1)
    bits, n, nq = 8, 150, 12  # 8 bits: many equal scores, ties broken by position
    d_bits = rng.integers(0, 2, (n, bits))
    signed = rng.choice([-1.0, -0.5, 0.5, 1.0], size=(nq, bits)).astype(np.float32)
    if multi_label:
        ql, dl = rng.integers(0, 2, (nq, 4)), rng.integers(0, 2, (n, 4))
    else:
        ql, dl = rng.integers(0, 3, nq), rng.integers(0, 3, n)
    got = ev.asymmetric_map(signed, pack_bits(d_bits), ql, dl, bits, map_at=(None, 20))
    aps, aps_k = [], []
    for i in range(nq):
        score = [float(signed[i] @ (2 * d_bits[j] - 1)) for j in range(n)]
        order = sorted(range(n), key=lambda j: (-score[j], j))
        rel = [bool(np.any(ql[i] & dl[j])) if multi_label else ql[i] == dl[j] for j in order]
        aps.append(average_precision(rel, n))
        aps_k.append(average_precision(rel, 20))
    assert got["map_all_asym"] == pytest.approx(np.mean(aps), abs=1e-9)
    assert got["map_20_asym"] == pytest.approx(np.mean(aps_k), abs=1e-9)
