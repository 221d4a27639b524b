"""Memory-mapped index benchmark: open and search a large index file without reading it.

Writes an index of N random codes (default 100M x 64 bits: an 800 MB file), then, in a
fresh process that imports only numpy and keras_hashing, measures:

* the time ``HammingIndex.load(path, mmap=True)`` takes, and the process's anonymous
  memory (RssAnon: what it allocated itself) before and after;
* one exhaustive k-NN search over every code: its time, the peak RssAnon sampled during
  it, and RssFile after it (file pages the kernel mapped in, which it can drop again);
* the same load with ``verify=True`` (streams the whole file through CRC32).

The file is written just before, so it sits in the page cache: the search times are
those of a warm cache, not of a cold disk.

Examples:
    python tools/bench_mmap.py --out docs/bench_mmap.json
    python tools/bench_mmap.py --n 1000000 --bits 256       # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from machine_info import machine  # noqa: E402  (tools/ is on sys.path)


def memory_kib() -> dict:
    """This process's RssAnon / RssFile / VmHWM in KiB (Linux /proc)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def write_index(path, n, bits, seed=0):
    """An index of n random codes (positional ids)."""
    import numpy as np

    from keras_hashing.search.index import HammingIndex

    rng = np.random.default_rng(seed)
    index = HammingIndex(bits)
    nbytes = -(-bits // 8)
    index.add(rng.integers(0, 256, (n, nbytes), dtype=np.uint8))
    index.save(path)
    return os.path.getsize(path)


def measure(path, queries, k):
    """Runs in the child process: open, search, report."""
    import threading

    import numpy as np

    from keras_hashing.search.index import HammingIndex

    before = memory_kib()
    start = time.perf_counter()
    index = HammingIndex.load(path, mmap=True)
    open_s = time.perf_counter() - start
    after_open = memory_kib()
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, (queries, index.code_size), dtype=np.uint8)

    peak = {"RssAnon": after_open["RssAnon"]}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["RssAnon"] = max(peak["RssAnon"], memory_kib()["RssAnon"])
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    dist, ids = index.search(q, k)
    search_s = time.perf_counter() - start
    done.set()
    sampler.join()
    after_search = memory_kib()
    start = time.perf_counter()
    HammingIndex.load(path, mmap=True, verify=True)
    verify_s = time.perf_counter() - start
    return {"codes": len(index), "bits": index.bits, "queries": queries, "k": k,
            "open_s": round(open_s, 4), "open_verify_s": round(verify_s, 2),
            "search_s": round(search_s, 2),
            "rss_anon_mib_before_open": round(before["RssAnon"] / 1024, 1),
            "rss_anon_mib_after_open": round(after_open["RssAnon"] / 1024, 1),
            "rss_anon_mib_peak_during_search": round(peak["RssAnon"] / 1024, 1),
            "rss_file_mib_after_search": round(after_search["RssFile"] / 1024, 1),
            "nearest_distance": int(dist[:, 0].min())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000_000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--dir", help="where the index file goes (default: a temp folder)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.queries, args.k)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "bench.khi")
        start = time.perf_counter()
        size = write_index(path, args.n, args.bits)
        write_s = time.perf_counter() - start
        child = subprocess.run(
            [sys.executable, __file__, "--child", path, "--queries", str(args.queries),
             "-k", str(args.k)], capture_output=True, text=True, check=False)
        if child.returncode != 0:
            raise SystemExit(f"measuring process failed:\n{child.stderr}")
        row = json.loads(child.stdout.strip().splitlines()[-1])
    row.update({"file_mib": round(size / 2**20, 1), "write_s": round(write_s, 1)})
    results = {"machine": machine(), "command": " ".join(["python"] + sys.argv),
               "mmap": row}
    print(json.dumps(results, indent=1))
    if args.out:
        from keras_hashing.fileio import write_json

        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
