"""Search benchmark: keras-hashing's index against faiss-cpu, side by side in one process.

Measures, on the same data and machine (medians of --repeats runs; ours and FAISS
alternate run by run, and a ratio is the median of the per-round ratios):

1. exhaustive top-k: our blocked scan (HammingIndex method="flat") vs faiss
   IndexBinaryFlat, at 64 and 256 bits, 1 and 2 threads; distances must match exactly;
2. where the scan's time goes: each numpy pass of ``scan._block_distances`` and the
   survivor selection timed alone, in ns per (query, code) pair, beside FAISS's whole
   search per pair on the same queries (``--only passes``);
3. latency of a few queries (1 and 10, k = 10), as a server sees them: ours and FAISS
   alternating, 1 and 2 threads (``--only latency``);
4. multi-index hashing: radius-2 search and exact 10-NN vs our linear scan, on uniform
   codes and on skewed "learned-like" codes, with the MIH tables' extra memory;
5. the SSDH paper's headline: per-comparison time and memory of 64-bit Hamming codes
   against 4096-d float32 Euclidean search (faiss IndexFlatL2 and numpy BLAS);
6. cold start (``--only cold``): one search in a new process whose kernel cache is empty
   (a new machine) and in the next one, and ``keras-hashing search`` end to end, both.

The scan runs on the kernel ``KH_SEARCH_KERNEL`` selects (the compiled one by default);
run with ``KH_SEARCH_KERNEL=numpy`` for the numpy scan's figures.

Learned-like codes: 10 cluster centres with 6% of bits flipped per code (the shape of a
trained model's codes: a few dense regions); ``--codes-from RUN`` uses a trained run's
Fashion-MNIST database codes instead, tiled to N with 2% of bits flipped per copy.

faiss-cpu is a benchmark extra (``pip install faiss-cpu``), not a runtime dependency.

Examples:
    python tools/bench_search.py --out docs/bench_search.json
    python tools/bench_search.py --quick          # 100k codes, 200 queries: a smoke run
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

from keras_hashing.search import mih, scan  # noqa: E402
from machine_info import machine  # noqa: E402  (tools/ is on sys.path)
from keras_hashing.fileio import read_json, write_json  # noqa: E402

SECTIONS = ("exhaustive", "passes", "latency", "mih", "headline", "cold")


def median_time(fn, repeats):
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def alternating_times(ref_fn, ours_fn, rounds):
    """Call the reference and ours in turn, once each per round, so a slow spell of this
    shared machine hits both: (reference times, our times, last results of each)."""
    t_ref, t_ours = [], []
    for _ in range(rounds):
        t, ref_out = median_time(ref_fn, 1)
        t_ref.append(t)
        t, our_out = median_time(ours_fn, 1)
        t_ours.append(t)
    return t_ref, t_ours, ref_out, our_out


def uniform_codes(rng, n, bits):
    return rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)


def learned_like_codes(rng, n, bits, centres=None, flip=0.06):
    if centres is None:
        centres = rng.integers(0, 2, (10, bits), dtype=np.uint8)
    bits_ = centres[rng.integers(0, len(centres), n)] ^ (rng.random((n, bits)) < flip)
    return np.packbits(bits_.astype(np.uint8), axis=1), centres


def codes_from_run(run_dir, n, rng, flip=0.02):
    """A trained run's database codes, tiled to n with a few bits flipped per copy."""
    from keras_hashing.codes import pack_bits
    from keras_hashing.runs import load_run
    from keras_hashing.runs import load_splits

    run = load_run(run_dir)
    splits = load_splits(run.config)
    base = run.model.encode_bits(splits.database.x)
    queries = run.model.encode_bits(splits.query.x[:1000])
    reps = -(-n // len(base))
    tiled = np.tile(base, (reps, 1))[:n]
    tiled ^= (rng.random(tiled.shape) < flip).astype(np.uint8)
    return pack_bits(tiled), pack_bits(queries), run.model.bits


def bench_exhaustive(rng, n, nq, k, bits_list, threads_list, repeats, faiss):
    rows = []
    for bits in bits_list:
        db, q = uniform_codes(rng, n, bits), uniform_codes(rng, nq, bits)
        ours = scan.Database(db, bits)
        ref = faiss.IndexBinaryFlat(bits)
        ref.add(db)
        for threads in threads_list:
            faiss.omp_set_num_threads(threads)
            t_ref, t_ours, (ref_d, _), (our_d, _) = alternating_times(
                lambda: ref.search(q, k), lambda: scan.top_k(ours, q, k, threads=threads),
                repeats)
            assert np.array_equal(np.asarray(ref_d, np.int32), our_d), "distances differ"
            ratios = [o / r for o, r in zip(t_ours, t_ref)]
            ratio = statistics.median(ratios)
            rows.append({"bits": bits, "threads": threads, "n": n, "queries": nq, "k": k,
                         "faiss_s": round(statistics.median(t_ref), 4),
                         "ours_s": round(statistics.median(t_ours), 4),
                         "ratio": round(ratio, 3),
                         "round_ratios": [round(r, 3) for r in ratios],
                         "distances_equal": True})
            print(f"exhaustive {bits}b threads={threads}: faiss {rows[-1]['faiss_s']:.3f}s "
                  f"ours {rows[-1]['ours_s']:.3f}s ratio {ratio:.2f} (rounds "
                  f"{', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
    return rows


def bench_passes(rng, n, nq, k, bits_list, repeats, faiss):
    """ns per (query, code) pair of each pass the scan makes, on one thread.

    The loop is ``scan._block_distances`` plus the cut-off compare and ``flatnonzero``
    of ``scan._top_k_block``, with each numpy call timed on its own (same block sizes);
    FAISS's whole ``IndexBinaryFlat`` search per pair on the same queries beside it.
    """
    rows = []
    width, qblock = scan.DB_BLOCK, scan.QUERY_BLOCK
    for bits in bits_list:
        db, q = uniform_codes(rng, n, bits), uniform_codes(rng, nq, bits)
        data = scan.Database(db, bits)
        ref = faiss.IndexBinaryFlat(bits)
        ref.add(db)
        faiss.omp_set_num_threads(1)
        t_ref, _ = median_time(lambda: ref.search(q, k), repeats)
        passes = []
        for _ in range(repeats):
            spent = dict.fromkeys(("xor", "bitwise_count", "add", "compare", "flatnonzero"),
                                  0.0)

            def timed(name, fn, *args, **kw):
                start = time.perf_counter()
                fn(*args, **kw)
                spent[name] += time.perf_counter() - start

            for s in range(0, nq, qblock):
                qw = scan.query_words(q[s:s + qblock], data.nwords)
                out, tmp, counts = scan._scratch(qw.shape[1], width, data.dist_dtype)
                mask = np.empty(out.shape, bool)
                cut = np.full((qw.shape[1], 1), bits // 4, data.dist_dtype)
                for start in range(0, n - width + 1, width):
                    words = data.words_block(start, start + width)
                    for w in range(data.nwords):
                        timed("xor", np.bitwise_xor, qw[w][:, None], words[w][None, :],
                              out=tmp)
                        timed("bitwise_count", np.bitwise_count, tmp,
                              out=out if w == 0 else counts)
                        if w:
                            timed("add", np.add, out, counts, out=out)
                    timed("compare", np.less, out, cut, out=mask)
                    timed("flatnonzero", np.flatnonzero, mask)
            passes.append(spent)
        pairs = (n // width) * width * nq
        row = {"bits": bits, "n": n, "queries": nq, "k": k, "threads": 1,
               "faiss_ns_per_pair": round(t_ref / (n * nq) * 1e9, 3)}
        for name in passes[0]:
            row[f"{name}_ns_per_pair"] = round(
                statistics.median(p[name] for p in passes) / pairs * 1e9, 3)
        row["passes_total_ns_per_pair"] = round(
            sum(v for key, v in row.items() if key.endswith("_ns_per_pair")
                and not key.startswith("faiss")), 3)
        rows.append(row)
        print(f"passes {bits}b: " + ", ".join(f"{key[:-12]} {v}" for key, v in row.items()
                                                if key.endswith("_ns_per_pair")), flush=True)
    return rows


def bench_latency(rng, n, bits_list, threads_list, faiss, k=10, rounds=15):
    """Milliseconds per call for 1 and 10 queries: medians of alternating rounds."""
    rows = []
    for bits in bits_list:
        db = uniform_codes(rng, n, bits)
        ours = scan.Database(db, bits)
        ref = faiss.IndexBinaryFlat(bits)
        ref.add(db)
        for nq in (1, 10):
            q = uniform_codes(rng, nq, bits)
            for threads in threads_list:
                faiss.omp_set_num_threads(threads)
                t_ref, t_ours, _, _ = alternating_times(
                    lambda: ref.search(q, k), lambda: scan.top_k(ours, q, k, threads=threads),
                    rounds)
                ms_ref, ms_ours = (statistics.median(t) * 1e3 for t in (t_ref, t_ours))
                rows.append({"bits": bits, "n": n, "queries": nq, "k": k, "threads": threads,
                             "faiss_ms": round(ms_ref, 2), "ours_ms": round(ms_ours, 2),
                             "ratio": round(ms_ours / ms_ref, 2)})
                print(f"latency {bits}b {nq} queries threads={threads}: faiss {ms_ref:.2f} ms "
                      f"ours {ms_ours:.2f} ms ratio {ms_ours / ms_ref:.2f}", flush=True)
    return rows


def bench_mih(rng, n, nq, repeats, run_dir=None):
    # MIH hands heavy queries to the scan, which would use every core: keep the whole
    # comparison on one thread, like the scan it is measured against.
    threads_before = os.environ.get("KH_SEARCH_THREADS")
    os.environ["KH_SEARCH_THREADS"] = "1"
    try:
        return _bench_mih(rng, n, nq, repeats, run_dir)
    finally:
        if threads_before is None:
            del os.environ["KH_SEARCH_THREADS"]
        else:
            os.environ["KH_SEARCH_THREADS"] = threads_before


def _bench_mih(rng, n, nq, repeats, run_dir=None):
    rows = []
    datasets = []
    db, q = uniform_codes(rng, n, 64), uniform_codes(rng, nq, 64)
    datasets.append(("uniform", db, q, 64))
    db, centres = learned_like_codes(rng, n, 64)
    q, _ = learned_like_codes(rng, nq, 64, centres)
    datasets.append(("learned-like", db, q, 64))
    if run_dir:
        db, q, bits = codes_from_run(run_dir, n, rng)
        datasets.append((f"trained run {os.path.basename(run_dir.rstrip('/'))}", db,
                         q[:nq], bits))
    for name, db, q, bits in datasets:
        flat = scan.Database(db, bits)
        start = time.perf_counter()
        tables = mih.MultiIndex(db, bits)
        build = time.perf_counter() - start
        for what, k_or_r in (("radius", 2), ("knn", 10)):
            if what == "radius":
                t_scan, ref = median_time(lambda: scan.within_radius(flat, q, 2, threads=1),
                                          repeats)
                t_mih, got = median_time(lambda: tables.within_radius(q, 2), repeats)
            else:
                t_scan, ref = median_time(lambda: scan.top_k(flat, q, 10, threads=1), repeats)
                tables.fallbacks = 0
                t_mih, got = median_time(lambda: tables.top_k(q, 10), repeats)
            assert all(np.array_equal(a, b) for a, b in zip(ref, got)), f"{name} {what}"
            row = {"codes": name, "bits": bits, "n": n, "queries": len(q), "search": what,
                   "param": k_or_r, "tables": tables.tables, "scan_s": round(t_scan, 4),
                   "mih_s": round(t_mih, 5), "speedup": round(t_scan / t_mih, 1),
                   "mih_extra_mib": round(tables.nbytes / 2**20, 1),
                   "build_s": round(build, 2), "exact": True}
            if what == "knn":
                row["queries_sent_to_scan"] = tables.fallbacks // repeats
            rows.append(row)
            print(f"mih {name} {what}: scan {t_scan:.4f}s mih {t_mih:.5f}s "
                  f"speedup {t_scan / t_mih:.1f}x extra {row['mih_extra_mib']} MiB", flush=True)
    return rows


def bench_headline(rng, n, nq, repeats, faiss):
    """64-bit Hamming vs 4096-d float32 L2: time and bytes per comparison."""
    dim = 4096
    feats = rng.standard_normal((n, dim), dtype=np.float32)
    qf = rng.standard_normal((nq, dim), dtype=np.float32)
    codes, qc = uniform_codes(rng, n, 64), uniform_codes(rng, nq, 64)
    faiss.omp_set_num_threads(1)
    l2 = faiss.IndexFlatL2(dim)
    l2.add(feats)
    t_faiss, _ = median_time(lambda: l2.search(qf, 1), repeats)
    d_sq = np.einsum("ij,ij->i", feats, feats)
    t_blas, _ = median_time(lambda: np.argmin(d_sq[None, :] - 2 * qf @ feats.T, axis=1),
                            repeats)
    db = scan.Database(codes, 64)
    t_ham, _ = median_time(lambda: scan.top_k(db, qc, 1, threads=1), repeats)
    per = lambda t: t / (n * nq)  # noqa: E731
    row = {"n": n, "queries": nq, "dim": dim,
           "hamming_ps_per_comparison": round(per(t_ham) * 1e12, 1),
           "faiss_l2_ps_per_comparison": round(per(t_faiss) * 1e12, 1),
           "numpy_blas_l2_ps_per_comparison": round(per(t_blas) * 1e12, 1),
           "time_ratio_vs_faiss_l2": round(t_faiss / t_ham, 1),
           "time_ratio_vs_numpy_blas": round(t_blas / t_ham, 1),
           "bytes_per_item_hamming": 8, "bytes_per_item_float": dim * 4,
           "memory_ratio": dim * 4 // 8,
           "paper": {"hamming_ps": 23.0, "euclidean_us": 22.6, "time_ratio": 982600}}
    print(f"headline: hamming {row['hamming_ps_per_comparison']} ps/comparison, faiss L2 "
          f"{row['faiss_l2_ps_per_comparison']} ps, BLAS {row['numpy_blas_l2_ps_per_comparison']}"
          f" ps: {row['time_ratio_vs_faiss_l2']}x / {row['time_ratio_vs_numpy_blas']}x, "
          f"memory {row['memory_ratio']}x", flush=True)
    return row


SEARCH_IN_A_NEW_PROCESS = """
import sys, time, numpy as np
t = time.perf_counter()
from keras_hashing.search import scan
db = scan.Database(np.random.default_rng(0).integers(0, 256, ({n}, 8), dtype=np.uint8), 64)
imported = time.perf_counter()
scan.top_k(db, db.codes[:1000], 100)  # big enough to load the compiled kernel
print(imported - t, time.perf_counter() - imported)
"""


def bench_cold_start(n, rounds=3):
    """Seconds of one search in a new process: with an empty kernel cache (a new
    machine: numba compiles) and with the cache the first one wrote; and the same for
    ``keras-hashing search`` end to end (TensorFlow's import and a digits model's
    encoding included), median of ``rounds``."""
    import shutil
    import subprocess
    import tempfile

    work = tempfile.mkdtemp(prefix="kh-cold-")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = SEARCH_IN_A_NEW_PROCESS.format(n=n)
    cli = [sys.executable, "-m", "keras_hashing"]
    run, index = os.path.join(work, "run"), os.path.join(work, "d.khi")
    subprocess.run(cli + ["fit", "--epochs", "1", "--bits", "64", "--out", run, "--quiet"],
                   env=env, check=True, capture_output=True)
    subprocess.run(cli + ["index", "build", "--run", run, "--out", index, "--quiet"],
                   env=env, check=True, capture_output=True)
    query = os.path.join(work, "q.png")
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(query)
    search = cli + ["search", "--run", run, "--index", index, "--images", query, "-k", "10"]
    rows = {}
    for name, first_cache in (("first (empty cache)", True), ("later (cached)", False)):
        scan_s, total_s = [], []
        for _ in range(rounds):
            cache = os.path.join(work, "numba-cache")
            if first_cache:
                shutil.rmtree(cache, ignore_errors=True)
            env["NUMBA_CACHE_DIR"] = cache
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            scan_s.append(float(out[1]))
            if first_cache:
                shutil.rmtree(cache, ignore_errors=True)
            start = time.perf_counter()
            subprocess.run(search, env=env, check=True, capture_output=True)
            total_s.append(time.perf_counter() - start)
        rows[name] = {"first_search_s": round(statistics.median(scan_s), 3),
                      "keras_hashing_search_s": round(statistics.median(total_s), 2)}
        print(f"cold start, {name}: first search {rows[name]['first_search_s']} s, "
              f"keras-hashing search {rows[name]['keras_hashing_search_s']} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--headline-n", type=int, default=50_000)
    p.add_argument("--codes-from", help="a trained run directory for real learned codes")
    p.add_argument("--only", choices=SECTIONS, action="append")
    p.add_argument("--quick", action="store_true", help="100k codes, 200 queries, 1 repeat")
    p.add_argument("--bits", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        import faiss
    except ImportError:
        raise SystemExit("bench_search needs faiss-cpu: pip install faiss-cpu") from None
    if args.quick:
        args.n, args.queries, args.repeats, args.headline_n = 100_000, 200, 1, 5_000
    only = set(args.only or SECTIONS)
    rng = np.random.default_rng(0)
    from keras_hashing.search import kernel

    results = {"machine": machine(), "command": " ".join(["python"] + sys.argv),
               "numpy": np.__version__, "faiss": faiss.__version__,
               "kernel": kernel.kernel_name()}
    if "exhaustive" in only:
        results["exhaustive"] = bench_exhaustive(rng, args.n, args.queries, args.k, args.bits,
                                                 (1, 2), args.repeats, faiss)
    if "passes" in only:
        results["passes"] = bench_passes(rng, args.n, min(args.queries, 256), args.k,
                                         (64, 256), args.repeats, faiss)
    if "latency" in only:
        results["latency"] = bench_latency(rng, args.n, args.bits, (1, 2), faiss)
    if "mih" in only:
        results["mih"] = bench_mih(rng, args.n, args.queries, args.repeats, args.codes_from)
    if "headline" in only:
        results["headline"] = bench_headline(rng, args.headline_n, min(args.queries, 200),
                                             args.repeats, faiss)
    if "cold" in only:
        results["cold"] = bench_cold_start(args.n)
    if args.out:
        write_json(args.out, merged_with_file(args.out, results, args.only))
    print(json.dumps(results, indent=1))
    return 0


def merged_with_file(path, results, only):
    """The results to write: with --only, an existing file's other sections are kept, and
    ``commands`` records the command that measured each section."""
    command = results.pop("command")
    old = read_json(path) if only and os.path.isfile(path) else {}
    commands = old.pop("commands", None) or {s: old["command"] for s in SECTIONS if s in old}
    old.pop("command", None)
    merged = {**old, **results}
    merged["commands"] = {**commands, **{s: command for s in SECTIONS if s in results}}
    return merged


if __name__ == "__main__":
    sys.exit(main())
