"""Benchmark the search service against calling HammingIndex.search directly.

Runs ``keras-hashing serve`` (codes only: the model is not measured) on loopback over an
index of N random codes, and drives it with a fixed number of requests from 1, 8 and 32
concurrent clients, one query code and k = 10 per request. Reports requests/s and
p50 / p99 latency beside the direct call in one process on the same queries, and the
failed requests while the index file is replaced under the 32-client load.

Usage:
    python tools/bench_serve.py [--codes 1000000] [--bits 64] [--requests 2000]
        [--out docs/bench_serve.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from keras_hashing.search import kernel
from keras_hashing.search.index import HammingIndex


def percentiles(seconds) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def direct(path, queries, k) -> dict:
    # as the service holds it: read into memory, the compiled scan loaded
    index = HammingIndex.load(path)
    kernel.load()
    index.search(queries[:1], k)  # warm: the first call builds the scan's pool
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], k)
        times.append(time.perf_counter() - start)
    return {"calls_per_s": round(len(queries) / sum(times), 1), **percentiles(times)}


def round_trip(url, requests=2000) -> dict:
    """p50 and p99 of ``GET /healthz`` from one client: HTTP with no work behind it."""
    import httpx

    times = []
    with httpx.Client(timeout=60) as http:
        for _ in range(requests):
            start = time.perf_counter()
            http.get(url + "/healthz").raise_for_status()
            times.append(time.perf_counter() - start)
    return {"requests": requests, **percentiles(times)}


def drive(url, queries, k, clients, requests, swap=None) -> dict:
    import httpx

    per_client = requests // clients
    times, failures = [], []
    lock = threading.Lock()

    def client(c):
        local = []
        with httpx.Client(timeout=60) as http:
            for i in range(per_client):
                q = queries[(c * per_client + i) % len(queries)]
                start = time.perf_counter()
                try:
                    r = http.post(url + "/v1/search", json={"codes": [q.tolist()], "k": k})
                    if r.status_code != 200:
                        failures.append(r.status_code)
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                local.append(time.perf_counter() - start)
        with lock:
            times.extend(local)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    swaps = swap() if swap else 0
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(times), "requests_per_s":
            round(len(times) / wall, 1), **percentiles(times), "failed": len(failures),
            **({"swaps": swaps} if swap else {})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codes", type=int, default=1_000_000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    nbytes = (args.bits + 7) // 8
    with tempfile.TemporaryDirectory(prefix="kh-bench-serve-") as work:
        path = os.path.join(work, "bench.khi")
        index = HammingIndex(args.bits)
        index.add(rng.integers(0, 256, (args.codes, nbytes), dtype=np.uint8))
        index.save(path)
        queries = rng.integers(0, 256, (512, nbytes), dtype=np.uint8)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "keras_hashing", "serve",
                                   "--index", path, "--port", str(port)],
                                  stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            from keras_hashing.serving.service import wait_until_healthy

            wait_until_healthy(url)
            report = {"codes": args.codes, "bits": args.bits, "k": args.k,
                      "direct": direct(path, queries, args.k), "service": []}
            report["healthz"] = round_trip(url, args.requests)  # HTTP alone: a request's floor
            for clients in (1, 8, 32):
                report["service"].append(drive(url, queries, args.k, clients, args.requests))

            def swap():
                for _ in range(3):  # replaced as index build does: a new file renamed in
                    time.sleep(0.5)
                    index.save(path)
                return 3
            report["hot_swap"] = drive(url, queries, args.k, 32, args.requests, swap)
            report["service_swaps_seen"] = httpx.get(url + "/v1/index").json()["swaps"]
        finally:
            server.terminate()
            server.wait()
    from machine_info import machine  # tools/ is this script's folder

    report["machine"] = machine()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
