"""Scoring a trained model: the retrieval metrics of its codes on a protocol's query and
database splits (what ``fit`` records in metrics.json and ``keras-hashing evaluate``
prints), and the collapse report. The metrics themselves are ``keras_hashing.evaluation``
(numpy only); this module encodes the splits and puts them together.

Example:
    >>> evaluate("runs/d32")["map_all"]                              # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import numpy as np

from keras_hashing import evaluation
from keras_hashing.codes import pack_bits
from keras_hashing.data.benchmarks import protocol_k
from keras_hashing.data.datasets import flat_pixels
from keras_hashing.data.images import warn
from keras_hashing.data.splits import DatasetSplits
from keras_hashing.encoders import readable
from keras_hashing.runs import load_run_with_splits


def collapse_report(splits: dict) -> dict:
    """``evaluation.collapse_check`` of each named split's (bits, labels), with one warning
    line per collapsed split; ``collapsed`` is True when any is."""
    report = {}
    for name, (bits, labels) in splits.items():
        check = evaluation.collapse_check(bits, labels)
        if check["collapsed"]:
            warn(f"{name}: {check['message']}")
        report[name] = check
    report["collapsed"] = any(check["collapsed"] for check in report.values())
    return report


PRECISION_KS = (1, 10, 50, 100, 200, 500, 1000)
# Euclidean ground truth of unsupervised methods: the nearest pixel-space neighbours, 1,000
# or 2% of the database if fewer (the BDNN code leaves K unstated; 1,000 is 1.7% of the
# Fashion-MNIST database, 2% of digits' is 29).
EUCLIDEAN_K = 1000
EUCLIDEAN_FRACTION = 0.02


def evaluate(run_path, dataset=None, data_dir=None, verbose=0, protocol=None) -> dict:
    """The retrieval metrics of the run at ``run_path`` on its own splits (``dataset``
    and ``data_dir`` point at a moved copy of its data; ``protocol``: another protocol
    with the same training split); as ``evaluate_model``.

    Example:
        >>> evaluate("runs/d32")["map_all"]                          # doctest: +SKIP
        0.93
        >>> evaluate("runs/unseen48", protocol="fmnist-unseen-all")["map_all"]  # doctest: +SKIP
        0.41
    """
    run, splits = load_run_with_splits(run_path, dataset, data_dir, protocol)
    return evaluate_model(run.model, splits, verbose=verbose)


def evaluate_model(model, splits: DatasetSplits, precision_ks=PRECISION_KS,
                   verbose=0) -> dict:
    """Query-vs-database retrieval metrics, the PR curve over Hamming radii, and code
    statistics of the database."""
    # One forward pass per split gives both the bits and the continuous codes (ablations).
    # A streamed split is encoded batch by batch from disk; images that could not be read
    # (on_bad_image: skip) are left out of the queries and the database.
    query_out, query_kept = readable(model.predict_arrays(splits.query, verbose=verbose))
    db_out, db_kept = readable(model.predict_arrays(splits.database, verbose=verbose))
    query_y, db_y = splits.query.y[query_kept], splits.database.y[db_kept]
    db_bits = np.asarray(db_out["bits"], np.uint8)
    query_codes, db_codes = pack_bits(np.asarray(query_out["bits"], np.uint8)), pack_bits(db_bits)
    # the protocol's own mAP@k beside mAP@all and @1000 (CIFAR-10: the whole database;
    # NUS-WIDE and COCO: 5000; others: 1000)
    k = protocol_k(splits.protocol, len(db_codes))
    metrics = evaluation.retrieval_metrics(
        query_codes, db_codes, query_y, db_y, model.bits,
        map_at=tuple(dict.fromkeys((None, 1000, k))), radius=2, precision_ks=precision_ks,
        pr_curve=True)
    metrics["map_at_k"], metrics["k"] = metrics[f"map_{k}"], k
    metrics["pr_curve"] = {key: [round(float(v), 5) for v in values]
                           for key, values in metrics["pr_curve"].items()}
    # the query keeps its real-valued code, the database its bits: the asymmetric ranking
    # that re-ranking (HammingIndex.search(rerank=...)) approaches
    signed = np.asarray(model.signed_code(np.asarray(query_out["code"], np.float32)))
    metrics.update(evaluation.asymmetric_map(signed, db_codes,
                                             query_y, db_y, model.bits,
                                             map_at=tuple(dict.fromkeys((None, 1000, k)))))
    metrics["map_at_k_asym"] = metrics[f"map_{k}_asym"]
    metrics["code_stats"] = evaluation.code_statistics(db_bits)
    metrics["collapse"] = collapse_report(
        {"query": (np.asarray(query_out["bits"], np.uint8), query_y), "database": (db_bits, db_y)})
    metrics["class_spread"] = evaluation.class_distance_spread(query_codes, query_y, model.bits)
    ablations = model.query_ablations()
    if ablations:
        metrics["ablations"] = {}
        for name, binarize in ablations.items():
            scores = evaluation.retrieval_metrics(
                pack_bits(binarize(query_out)), pack_bits(binarize(db_out)), query_y, db_y,
                model.bits, map_at=(None, 1000), radius=None)
            metrics["ablations"][name] = {"map_all": scores["map_all"],
                                          "map_1000": scores["map_1000"]}
    if not model.supervised and splits.query.in_memory and splits.database.in_memory:
        # Unsupervised codes are judged on what they were built for as well: keeping the
        # Euclidean neighbours of the pixels (the UH-BDNN / ITQ protocol).
        k = max(1, min(EUCLIDEAN_K, round(EUCLIDEAN_FRACTION * len(db_codes))))
        neighbours = evaluation.euclidean_neighbours(
            flat_pixels(splits.query.x), flat_pixels(splits.database.x), k=k)
        euclid = evaluation.retrieval_metrics(
            query_codes, db_codes, None, None, model.bits, map_at=(None, 1000), radius=2,
            relevance_fn=evaluation.neighbour_relevance(neighbours, len(db_codes)))
        metrics.update({"map_all_euclidean": euclid["map_all"],
                        "map_1000_euclidean": euclid["map_1000"],
                        "p_r2_euclidean": euclid["p_r2"], "euclidean_k": k})
    return metrics
