"""Retrieval metrics over Hamming rankings (numpy only, no TensorFlow).

Conventions, stated because peers disagree silently:

* Relevance: single-label (1-D labels) -> same label; multi-label (2-D multi-hot) -> at
  least one shared label.
* Ranking: by Hamming distance, ties broken by database position (stable sort).
* mAP@k: the AP of a query is the mean of precision@i over the ranks i <= k that hold a
  relevant item (normalised by the relevant items *in the top k*, as DeepHash-pytorch's
  ``CalcTopMap`` and SSDH do); a query with no relevant item in its top k has AP 0 and
  still counts. ``k=None`` means mAP@all (k = database size, no item dropped).
* precision@radius r: relevant / retrieved among items at distance <= r; a query that
  retrieves nothing scores 0.
* precision@k: (#relevant in the top k) / k, averaged over queries.
* precision-recall curve: swept over the Hamming radius r = 0..K, per-query precision
  (0 when nothing is retrieved) and recall (0 when the database holds no relevant item),
  averaged over queries.

Example:
    >>> import numpy as np
    >>> from keras_hashing.codes import pack_bits
    >>> db = pack_bits([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]])
    >>> q = pack_bits([[0, 0, 0, 0]])
    >>> round(mean_average_precision(q, db, [0], [0, 1, 1], bits=4), 4)
    1.0
    >>> round(mean_average_precision(q, db, [1], [0, 1, 1], bits=4), 4)  # ranks 2, 3
    0.5833
"""

from __future__ import annotations

import numpy as np

from . import codes as codes_lib
from .errors import HashingError

# Cap on (queries x database) elements processed per chunk.
_CHUNK_ELEMENTS = 1 << 22


def relevance(query_labels, database_labels) -> np.ndarray:
    """Boolean (Q, N) relevance: same label, or a shared label for multi-hot labels."""
    ql, dl = np.asarray(query_labels), np.asarray(database_labels)
    if ql.ndim != dl.ndim or ql.ndim not in (1, 2):
        raise HashingError(f"labels must both be 1-D class ids or both 2-D multi-hot, got "
                           f"shapes {ql.shape} and {dl.shape}")
    if ql.ndim == 1:
        return ql[:, None] == dl[None, :]
    if ql.shape[1] != dl.shape[1]:
        raise HashingError(f"multi-hot labels have {ql.shape[1]} and {dl.shape[1]} classes")
    return (ql.astype(np.float32) @ dl.astype(np.float32).T) > 0


def retrieval_metrics(query_codes, database_codes, query_labels, database_labels, bits,
                      map_at=(None, 1000), radius=2, precision_ks=(), relevance_fn=None,
                      pr_curve=False):
    """Every metric in one pass over query chunks: each chunk's Hamming distances are
    computed once and serve them all.

    Args:
        query_codes, database_codes: packed uint8 codes (``codes.pack_bits`` rows).
        query_labels, database_labels: class ids (N,) or multi-hot (N, C).
        bits: code length K.
        map_at: the k of each mAP@k to compute; None means @all.
        radius: precision@radius r (inclusive); None to skip.
        precision_ks: the k of each precision@k.
        relevance_fn: optional ``fn(query_slice, all) -> bool (q, N)`` replacing label
            relevance (e.g. Euclidean-neighbour ground truth); it receives query indices.
        pr_curve: also the precision-recall curve over radii 0..K (``pr_curve``:
            {"precision": [...], "recall": [...]}, as ``precision_recall_curve``).

    Returns:
        dict with ``map_all`` / ``map_<k>``, ``p_r<radius>``, ``p_at_k`` (list),
        ``num_queries`` and ``num_database``.
    """
    q = codes_lib.as_packed(query_codes, bits)
    d = codes_lib.as_packed(database_codes, bits)
    nq, n = q.shape[0], d.shape[0]
    if nq == 0 or n == 0:
        raise HashingError(f"cannot evaluate with {nq} queries and {n} database items")
    if relevance_fn is None:
        ql, dl = np.asarray(query_labels), np.asarray(database_labels)
        if ql.shape[0] != nq or dl.shape[0] != n:
            raise HashingError(f"{nq} query codes but {ql.shape[0]} labels, or {n} database "
                               f"codes but {dl.shape[0]} labels")
        relevance_fn = lambda rows: relevance(ql[rows], dl)  # noqa: E731
    ks = [n if k is None else min(int(k), n) for k in map_at]
    pks = [min(int(k), n) for k in precision_ks]
    ap_sums = np.zeros(len(ks))
    pk_sums = np.zeros(len(pks))
    pr_sum = 0.0
    curve = (np.zeros(bits + 1), np.zeros(bits + 1)) if pr_curve else None
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, nq, chunk):
        rows = np.arange(start, min(nq, start + chunk))
        dist = codes_lib.hamming_distances(q[rows], d, bits)
        rel = np.asarray(relevance_fn(rows), dtype=bool)
        if curve is not None:
            _add_pr_curve(dist, rel, bits + 1, *curve)
        # uint16 keys make numpy's stable sort a radix sort: O(N) per row.
        order = np.argsort(dist.astype(np.uint16), axis=1, kind="stable")
        rel_sorted = np.take_along_axis(rel, order, axis=1)
        hits = np.cumsum(rel_sorted, axis=1, dtype=np.int64)
        ranks = np.arange(1, n + 1)
        precision = hits / ranks
        for j, k in enumerate(ks):
            relevant_in_top = hits[:, k - 1]
            ap_num = (precision[:, :k] * rel_sorted[:, :k]).sum(axis=1)
            ap_sums[j] += np.divide(ap_num, relevant_in_top, out=np.zeros(len(rows)),
                                    where=relevant_in_top > 0).sum()
        for j, k in enumerate(pks):
            pk_sums[j] += (hits[:, k - 1] / k).sum()
        if radius is not None:
            within = dist <= radius
            retrieved = within.sum(axis=1)
            relevant_retrieved = (within & rel).sum(axis=1)
            pr_sum += np.divide(relevant_retrieved, retrieved, out=np.zeros(len(rows)),
                                where=retrieved > 0).sum()
    out = {"num_queries": int(nq), "num_database": int(n)}
    for k, s in zip(map_at, ap_sums):
        out["map_all" if k is None else f"map_{int(k)}"] = float(s / nq)
    if radius is not None:
        out[f"p_r{int(radius)}"] = float(pr_sum / nq)
    if pks:
        out["p_at_k"] = [float(s / nq) for s in pk_sums]
        out["precision_ks"] = [int(k) for k in precision_ks]
    if curve is not None:
        out["pr_curve"] = {"precision": (curve[0] / nq).tolist(),
                           "recall": (curve[1] / nq).tolist()}
    return out


def asymmetric_map(signed_queries, database_codes, query_labels, database_labels, bits,
                   map_at=(None,)) -> dict:
    """mAP@k of the asymmetric ranking: the database (packed bits b) ordered for each
    query by <s, 2b - 1>, its real-valued signed code s against the bits (highest first,
    ties by position), with the module's mAP@k conventions. This is re-ranking with the
    whole database as candidates (``HammingIndex.search(rerank=...)`` re-ranks a Hamming
    top R). Returns ``{"map_all_asym": ..., "map_<k>_asym": ...}``.

    Example:
        >>> import numpy as np
        >>> db = codes_lib.pack_bits([[0, 1], [1, 0], [0, 0]])
        >>> s = np.array([[0.9, -0.1]])            # bits 10: item 1 first, then 2, then 0
        >>> asymmetric_map(s, db, [1], [0, 0, 1], bits=2)
        {'map_all_asym': 0.5}
    """
    signed = np.asarray(signed_queries, np.float32)
    d = codes_lib.as_packed(database_codes, bits)
    ql, dl = np.asarray(query_labels), np.asarray(database_labels)
    nq, n = signed.shape[0], d.shape[0]
    if nq == 0 or n == 0 or signed.shape[1] != bits or len(ql) != nq or len(dl) != n:
        raise HashingError(f"asymmetric mAP needs (Q, {bits}) signed codes and matching "
                           f"labels, got {signed.shape} for {n} database items")
    pm1 = codes_lib.unpack_bits(d, bits).astype(np.float32) * 2.0 - 1.0
    ks = [n if k is None else min(int(k), n) for k in map_at]
    ap_sums = np.zeros(len(ks))
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, nq, chunk):
        rows = np.arange(start, min(nq, start + chunk))
        order = np.argsort(-(signed[rows] @ pm1.T), axis=1, kind="stable")
        rel_sorted = np.take_along_axis(relevance(ql[rows], dl), order, axis=1)
        hits = np.cumsum(rel_sorted, axis=1, dtype=np.int64)
        precision = hits / np.arange(1, n + 1)
        for j, k in enumerate(ks):
            found = hits[:, k - 1]
            ap = (precision[:, :k] * rel_sorted[:, :k]).sum(axis=1)
            ap_sums[j] += np.divide(ap, found, out=np.zeros(len(rows)), where=found > 0).sum()
    return {("map_all" if k is None else f"map_{int(k)}") + "_asym": float(total / nq)
            for k, total in zip(map_at, ap_sums)}


def _add_pr_curve(dist, rel, bins, p_sum, r_sum) -> None:
    """Add a chunk's per-radius precision and recall sums into ``p_sum`` / ``r_sum``."""
    rows = dist.shape[0]
    offsets = dist + (np.arange(rows) * bins)[:, None]
    count = np.bincount(offsets.ravel(), minlength=rows * bins).reshape(-1, bins)
    rel_count = np.bincount(offsets.ravel(), weights=rel.ravel().astype(np.float64),
                            minlength=rows * bins).reshape(-1, bins)
    retrieved = np.cumsum(count, axis=1)
    relevant_retrieved = np.cumsum(rel_count, axis=1)
    total_relevant = rel.sum(axis=1, keepdims=True)
    p_sum += np.divide(relevant_retrieved, retrieved, out=np.zeros_like(relevant_retrieved),
                       where=retrieved > 0).sum(axis=0)
    r_sum += np.divide(relevant_retrieved, total_relevant, out=np.zeros_like(relevant_retrieved),
                       where=total_relevant > 0).sum(axis=0)


def euclidean_neighbours(query_features, database_features, k=1000,
                         chunk_elements=_CHUNK_ELEMENTS) -> np.ndarray:
    """Indices (nq, k) of each query's k nearest database items by Euclidean distance.

    The ground truth of unsupervised hashing papers (UH-BDNN, ITQ): an item is relevant
    to a query when it is among the query's k Euclidean nearest neighbours in the input
    space. Computed exactly with BLAS, a chunk of queries at a time.

    Example:
        >>> euclidean_neighbours(np.array([[0.0], [5.0]]), np.array([[4.0], [1.0], [9.0]]), 2)
        array([[1, 0],
               [0, 1]])
    """
    q = np.asarray(query_features, np.float32).reshape(len(query_features), -1)
    d = np.asarray(database_features, np.float32).reshape(len(database_features), -1)
    k = min(int(k), len(d))
    d_sq = np.einsum("ij,ij->i", d, d)
    out = np.empty((len(q), k), np.int64)
    chunk = max(1, chunk_elements // max(len(d), 1))
    for start in range(0, len(q), chunk):
        # ||q||^2 is constant per row: the ranking needs only ||d||^2 - 2 q.d
        dist = d_sq[None, :] - 2.0 * (q[start:start + chunk] @ d.T)
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def neighbour_relevance(neighbours, num_database):
    """A ``relevance_fn`` for ``retrieval_metrics``: relevant = among the listed neighbours."""
    neighbours = np.asarray(neighbours)

    def relevance_fn(rows):
        rel = np.zeros((len(rows), num_database), dtype=bool)
        np.put_along_axis(rel, neighbours[rows], True, axis=1)
        return rel

    return relevance_fn


def mean_average_precision(query_codes, database_codes, query_labels, database_labels,
                           bits, k=None) -> float:
    """mAP@k (k=None: @all) with the conventions in the module docstring."""
    m = retrieval_metrics(query_codes, database_codes, query_labels, database_labels, bits,
                          map_at=(k,), radius=None)
    return m["map_all" if k is None else f"map_{int(k)}"]


def map_by_class(query_codes, database_codes, query_labels, database_labels, bits) -> dict:
    """{class id: mAP@all of that class's queries}, single-label data only: whether a code
    is weak everywhere or folds a few confusable classes together. Weighted by each
    class's query count, the values average back to ``mean_average_precision``.

    Example:
        >>> from keras_hashing.codes import pack_bits
        >>> db = pack_bits([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]])
        >>> q = pack_bits([[0, 0, 0, 0], [1, 1, 1, 1]])
        >>> {c: round(v, 4) for c, v in map_by_class(q, db, [0, 1], [0, 1, 1], 4).items()}
        {0: 1.0, 1: 1.0}
    """
    query_labels = np.asarray(query_labels)
    if query_labels.ndim != 1:
        raise HashingError("mAP by class needs single-label data (one class id per query), "
                           f"got labels of shape {query_labels.shape}")
    return {int(c): mean_average_precision(query_codes[query_labels == c], database_codes,
                                           query_labels[query_labels == c], database_labels,
                                           bits)
            for c in np.unique(query_labels)}


def precision_at_radius(query_codes, database_codes, query_labels, database_labels, bits,
                        radius=2) -> float:
    """Mean precision of the items within Hamming distance ``radius``; empty result -> 0."""
    m = retrieval_metrics(query_codes, database_codes, query_labels, database_labels, bits,
                          map_at=(), radius=radius)
    return m[f"p_r{int(radius)}"]


def precision_at_k(query_codes, database_codes, query_labels, database_labels, bits,
                   ks=(1, 10, 100, 1000)) -> np.ndarray:
    """Mean precision@k for each k in ``ks`` (k is capped at the database size)."""
    m = retrieval_metrics(query_codes, database_codes, query_labels, database_labels, bits,
                          map_at=(), radius=None, precision_ks=ks)
    return np.asarray(m["p_at_k"])


def precision_recall_curve(query_codes, database_codes, query_labels, database_labels,
                           bits):
    """Precision and recall at every Hamming radius r = 0..K.

    Returns:
        (radii, precision, recall), each of length K + 1.
    """
    curve = retrieval_metrics(query_codes, database_codes, query_labels, database_labels,
                              bits, map_at=(), radius=None, pr_curve=True)["pr_curve"]
    return np.arange(bits + 1), np.array(curve["precision"]), np.array(curve["recall"])


def code_statistics(bits) -> dict:
    """Health of a set of 0/1 codes (N, K): balance, diversity and collapse indicators.

    ``balanced_bit_fraction`` counts bits whose ones-rate is in [0.3, 0.7];
    ``constant_bits`` counts bits that never change (a sign of collapse);
    ``unique_code_fraction`` is distinct codes / N; ``mean_bit_correlation`` is the mean
    absolute correlation between pairs of non-constant bits.
    """
    b = np.asarray(bits, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] == 0:
        raise HashingError(f"bits must be a non-empty (N, K) array, got shape {b.shape}")
    rate = b.mean(axis=0)
    varying = (rate > 0) & (rate < 1)
    corr = 0.0
    if varying.sum() > 1:
        c = np.corrcoef(b[:, varying], rowvar=False)
        corr = float(np.abs(c[~np.eye(len(c), dtype=bool)]).mean())
    return {
        "ones_rate_mean": float(rate.mean()),
        "balanced_bit_fraction": float(((rate >= 0.3) & (rate <= 0.7)).mean()),
        "constant_bits": int((~varying).sum()),
        "unique_code_fraction": float(len(np.unique(np.packbits(b.astype(bool), axis=1),
                                                    axis=0)) / b.shape[0]),
        "mean_bit_correlation": corr,
    }


def collapse_check(bits, labels=None) -> dict:
    """Whether a split's 0/1 codes (N, K) have collapsed, with the numbers that say so.

    Collapsed: the N >= 2 codes take one value, or fewer distinct values than the split
    has classes, so some classes cannot be told apart. Classes are the distinct labels of
    single-label data, and the label columns in use of multi-hot data (not its distinct
    label sets: 2,000 NUS-WIDE images hold hundreds of those, and a good code need not
    tell each set from every other). A healthy
    model may put a whole class on one code (CSQ's centres), so the bar is the class
    count, not N; for the same reason bits that never change are reported, not judged
    (two classes on two opposite-free centres leave about half the bits constant).
    ``message`` is the one line to print, or None.

    Example:
        >>> import numpy as np
        >>> check = collapse_check(np.zeros((6, 8), np.uint8), labels=[0, 0, 1, 1, 2, 2])
        >>> check["collapsed"], check["distinct_codes"], check["constant_bits"]
        (True, 1, 8)
        >>> collapse_check(np.eye(6, 8, dtype=np.uint8), labels=[0, 0, 1, 1, 2, 2])["collapsed"]
        False
        >>> multi_hot = [[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]   # 3 classes, 4 label sets
        >>> collapse_check(np.eye(4, 8, dtype=np.uint8)[[0, 1, 2, 2]], multi_hot)["classes"]
        3
    """
    b = np.asarray(bits, dtype=np.uint8)
    if b.ndim != 2 or b.shape[0] == 0:
        raise HashingError(f"bits must be a non-empty (N, K) array, got shape {b.shape}")
    n, k = b.shape
    distinct = len(np.unique(np.packbits(b.astype(bool), axis=1), axis=0))
    rate = b.mean(axis=0)
    constant = int(((rate == 0) | (rate == 1)).sum())
    classes = None
    if labels is not None:
        y = np.asarray(labels)
        classes = int((y.reshape(len(y), -1) != 0).any(axis=0).sum() if y.ndim == 2
                      else len(np.unique(y)))
    collapsed = n >= 2 and (distinct == 1 or (classes is not None and distinct < min(classes, n)))
    of_classes = "" if classes is None else f" of {classes} classes"
    message = (f"the codes look collapsed: {distinct} distinct code(s) for {n} images"
               f"{of_classes}, {constant} of {k} bits never change" if collapsed else None)
    return {"collapsed": bool(collapsed), "items": int(n), "distinct_codes": int(distinct),
            "classes": classes, "constant_bits": constant, "bits": int(k), "message": message}


def class_distance_spread(codes, labels, bits: int, max_items=2000) -> dict:
    """How far apart codes lie within and between classes: the Hamming distances of every
    pair among the first ``max_items`` codes, split by relevance.

    ``overlap`` is the share of between-class pairs closer than the 90th percentile of
    within-class distances: the pairs a ranking puts among a class's own items. A loss
    that lets similar pairs drift (DPSH's sigmoid saturates at 1/2 u^T u) shows here as a
    wide within-class tail.

    Example:
        >>> import numpy as np
        >>> from keras_hashing.codes import pack_bits
        >>> codes = pack_bits(np.array([[0] * 8, [0] * 7 + [1], [1] * 8, [1] * 6 + [0] * 2]))
        >>> class_distance_spread(codes, np.array([0, 0, 1, 1]), 8)["within_mean"]
        1.5
    """
    codes = np.asarray(codes)[:max_items]
    labels = np.asarray(labels)[:max_items]
    dist = codes_lib.hamming_distances(codes, codes, bits)
    same = relevance(labels, labels)
    pairs = np.triu(np.ones(same.shape, bool), k=1)
    within, between = dist[same & pairs], dist[~same & pairs]
    if within.size == 0 or between.size == 0:  # one class only, or every item its own
        return {"items": int(len(codes)), "within_mean": None, "within_p90": None,
                "between_mean": None, "between_p10": None, "overlap": None}
    p90 = float(np.percentile(within, 90))
    return {"items": int(len(codes)), "within_mean": float(within.mean()), "within_p90": p90,
            "between_mean": float(between.mean()),
            "between_p10": float(np.percentile(between, 10)),
            "overlap": float((between < p90).mean())}
