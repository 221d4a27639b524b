"""Asymmetric re-ranking: what it buys (mAP) and what it costs (time per query).

1. ``--runs RUN ...``: for each finished run, the query mAP@all of Hamming ranking and of
   the asymmetric ranking (the query's real-valued code against the database's bits),
   on the run's own splits (what ``evaluate`` reports as map_all / map_all_asym).
2. The cost per query of ``HammingIndex.search(k)`` against
   ``search(k, rerank=..., depth=R)`` on random codes: the median of ``--repeats`` runs,
   side by side in one process.

Example:
    python tools/bench_rerank.py --runs runs/reproduce/fmnist/*_48b --out docs/bench_rerank.json
    python tools/bench_rerank.py --items 1000000 --bits 64 -k 100 --depth 1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from machine_info import machine  # noqa: E402  (tools/ is on sys.path)


def run_gain(path) -> dict:
    """The run's Hamming and asymmetric query mAP@all, and how unevenly its query codes
    spread their magnitude: ``peak_to_mean``, the median over queries of the largest
    |component| of the signed code over its mean |component| (1 for a code of +-c, large
    where a few components outvote the rest of the asymmetric inner product)."""
    from keras_hashing.scoring import evaluate_model
    from keras_hashing.runs import load_run_with_splits

    run, splits = load_run_with_splits(path)
    query = evaluate_model(run.model, splits)
    magnitude = np.abs(np.asarray(run.model.signed_code(run.model.embed(splits.query))))
    peak = np.median(magnitude.max(axis=1) / np.maximum(magnitude.mean(axis=1), 1e-12))
    return {"run": path, "map_all": round(query["map_all"], 4),
            "map_all_asym": round(query["map_all_asym"], 4),
            "gain": round(query["map_all_asym"] - query["map_all"], 4),
            "peak_to_mean": round(float(peak), 2)}


def search_cost(items, bits, k, depth, queries, repeats, seed=0) -> dict:
    from keras_hashing.codes import pack_bits
    from keras_hashing.search.index import HammingIndex

    rng = np.random.default_rng(seed)
    index = HammingIndex(bits)
    index.add(np.packbits(rng.integers(0, 2, (items, bits), dtype=np.uint8), axis=1))
    signed = rng.normal(size=(queries, bits)).astype(np.float32)
    codes = pack_bits(signed >= 0)
    index.search(codes[:2], k)  # warm-up: the scan's tables and threads
    plain, reranked = [], []
    for _ in range(repeats):  # alternated, so drift on a shared machine hits both alike
        start = time.perf_counter()
        index.search(codes, k)
        plain.append((time.perf_counter() - start) / queries)
        start = time.perf_counter()
        index.search(codes, k, rerank=signed, depth=depth)
        reranked.append((time.perf_counter() - start) / queries)
    p, r = statistics.median(plain), statistics.median(reranked)
    return {"items": items, "bits": bits, "k": k, "depth": depth, "queries": queries,
            "repeats": repeats, "ms_per_query_plain": round(p * 1e3, 3),
            "ms_per_query_rerank": round(r * 1e3, 3), "ratio": round(r / p, 3)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    parser.add_argument("-k", type=int, default=100)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    result = {"machine": machine(), "gains": [run_gain(p) for p in args.runs],
              "cost": [] if args.skip_cost else [
                  search_cost(args.items, b, args.k, args.depth, args.queries, args.repeats)
                  for b in args.bits]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from keras_hashing.fileio import write_text

        write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
