"""The compiled scan kernel (keras_hashing.search.kernel) gives exactly what the numpy
scan gives: distances, positions and the order of ties, on every path a search takes."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_hashing.codes import pack_bits
from keras_hashing.errors import HashingError
from keras_hashing.search import kernel, scan

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                reason="numba is a dependency")


def _codes(rng, n, bits, distinct=None):
    """Packed codes; with ``distinct``, n rows drawn from that many codes (ties)."""
    rows = rng.integers(0, 2, size=(distinct or n, bits), dtype=np.uint8)
    if distinct:
        rows = rows[rng.integers(0, distinct, n)]
    return pack_bits(rows)


def _both(monkeypatch, fn):
    monkeypatch.setattr(kernel, "MIN_KERNEL_WORK", 0)  # compiled however small the scan
    monkeypatch.setenv("KH_SEARCH_KERNEL", "numpy")
    reference = fn()
    monkeypatch.setenv("KH_SEARCH_KERNEL", "numba")
    assert kernel.enabled()
    return reference, fn()


@pytest.mark.parametrize("bits", [12, 64, 100, 256])
@pytest.mark.parametrize("ties", [False, True])
def test_compiled_top_k_is_the_numpy_scans_on_every_path(monkeypatch, bits, ties):
    rng = np.random.default_rng(bits + ties)
    codes = _codes(rng, 5000, bits, distinct=30 if ties else None)
    monkeypatch.setattr(kernel, "MIN_SPLIT_WORDS", 1)  # a few queries split the database
    monkeypatch.setattr(scan, "MAPPED_CHUNK", 777)  # a mapped index, chunk by chunk
    for in_memory in (True, False):
        db = scan.Database(codes, bits, in_memory=in_memory)
        for nq in (1, 2, 45):
            queries = _codes(rng, nq, bits)
            for threads in (1, 2, 3):
                for k in (1, 7, 64, 600, 5000):
                    ref, got = _both(monkeypatch, lambda: scan.top_k(db, queries, k, threads))
                    for a, b in zip(ref, got):
                        np.testing.assert_array_equal(a, b)
                        assert a.dtype == b.dtype


@pytest.mark.parametrize("bits", [16, 64, 256])
def test_compiled_radius_search_is_the_numpy_scans(monkeypatch, bits):
    rng = np.random.default_rng(bits)
    codes = _codes(rng, 4000, bits, distinct=50)
    monkeypatch.setattr(scan, "MAPPED_CHUNK", 999)
    for in_memory in (True, False):
        db = scan.Database(codes, bits, in_memory=in_memory)
        queries = _codes(rng, 33, bits)
        for radius in (0, 2, bits // 3, bits):
            for threads in (1, 2):
                ref, got = _both(monkeypatch,
                                 lambda: scan.within_radius(db, queries, radius, threads))
                for a, b in zip(ref, got):
                    np.testing.assert_array_equal(a, b)


def test_a_small_one_off_scan_stays_on_numpy_and_a_loaded_kernel_takes_every_scan():
    code = ("import sys, numpy as np\n"
            "from keras_hashing.search import kernel, scan\n"
            "db = scan.Database(np.zeros((1000, 8), np.uint8), 64)\n"
            "scan.top_k(db, np.zeros((3, 8), np.uint8), 5)\n"
            "small = 'numba' in sys.modules\n"
            "kernel.load()\n"
            "print(small, kernel.use_for(1))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "KH_SEARCH_KERNEL": ""})
    assert out.stdout.split() == ["False", "True"]


def test_the_kernel_setting_is_checked_and_numpy_turns_it_off(monkeypatch):
    monkeypatch.setenv("KH_SEARCH_KERNEL", "fast")
    with pytest.raises(HashingError, match="KH_SEARCH_KERNEL must be one of numba, numpy"):
        kernel.kernel_name()
    monkeypatch.setenv("KH_SEARCH_KERNEL", "numpy")
    assert not kernel.enabled()
    monkeypatch.delenv("KH_SEARCH_KERNEL")
    assert kernel.kernel_name() == "numba"


SEARCH_ONCE = """
import json, time, numpy as np
t = time.perf_counter()
from keras_hashing.search import kernel, kernel_numba, scan
kernel.MIN_KERNEL_WORK = 0
db = scan.Database(np.zeros((100, 8), np.uint8), 64)
scan.top_k(db, np.zeros((1, 8), np.uint8), 5, threads=1)
scan.within_radius(db, np.zeros((1, 8), np.uint8), 2, threads=1)
stats = [kernel_numba.top_k.stats, kernel_numba.finish.stats, kernel_numba.radius.stats]
print(json.dumps({"hits": sum(sum(s.cache_hits.values()) for s in stats),
                  "misses": sum(sum(s.cache_misses.values()) for s in stats),
                  "seconds": time.perf_counter() - t}))
"""


def test_a_new_process_loads_the_kernels_from_the_cache_instead_of_compiling(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "KH_SEARCH_KERNEL": "numba", "KH_SEARCH_THREADS": "1"}

    def run():
        out = subprocess.run([sys.executable, "-c", SEARCH_ONCE], env=env, check=True,
                             capture_output=True, text=True, timeout=300)
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["misses"] == 3 and first["hits"] == 0  # compiled, and written
    assert any((tmp_path / "cache").rglob("*.nbi"))
    assert second["misses"] == 0 and second["hits"] == 3
    assert second["seconds"] < first["seconds"]
