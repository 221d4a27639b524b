"""The compiled Hamming scan: XOR, popcount and each query's cut-off compare fused in one
loop over a block of codes, compiled by numba (LLVM, for the CPU it runs on: VPOPCNTQ
where AVX-512 has it, AVX2 elsewhere). ``scan.top_k`` and ``scan.within_radius`` call it
when it is on; the numpy scan is the fallback and the reference the tests hold it to.

The results are the numpy scan's exactly: distances, positions, and ties ordered by
position. Each query keeps the codes that may still enter its top k in a small buffer
in position order, with a histogram of their distances; the cut-off (a later code enters
only with a distance strictly below it) is the smallest distance whose count reaches k.

Compiled functions are cached on disk (numba's ``cache=True``): ``NUMBA_CACHE_DIR`` when
set, else the package's ``__pycache__`` when writable, else ``~/.cache/numba``; a new
process loads them instead of compiling.

``KH_SEARCH_KERNEL=numpy`` turns the kernel off; without numba it is off. A process
loads it on its first scan big enough to pay for loading (``use_for``).

Example:
    >>> import numpy as np
    >>> words = np.array([[0b1111, 0b0001, 0]], np.uint64)        # (W=1, N=3)
    >>> d, pos = top_k_words(np.array([[0]], np.uint64), words, k=2, bits=4)
    >>> d.tolist(), pos.tolist()
    ([[0, 1]], [[2, 1]])
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from keras_hashing.errors import HashingError

KERNELS = ("numba", "numpy")
# Scan work (queries x codes x 64-bit words) from which a process loads the kernel: the
# numpy scan takes about 1 ns per unit of it, so loading (0.7 s) then pays for itself.
MIN_KERNEL_WORK = 1 << 28
# Queries x 64-bit words of codes below which a few queries are not split across the
# threads: measured on the 2-core EPYC, one query over 1M x 64-bit codes (1M) takes
# 0.24 ms on one thread and 0.35 ms split in two (the hand-over costs more than it
# saves); 10 queries over them (10M) 2.9 ms on one thread.
MIN_SPLIT_WORDS = 4 << 20


def kernel_name() -> str:
    """``KH_SEARCH_KERNEL`` ("numba" or "numpy"); by default numba where it is installed.
    Finding out imports nothing."""
    env = os.environ.get("KH_SEARCH_KERNEL", "").strip().lower()
    if env and env not in KERNELS:
        raise HashingError(f"KH_SEARCH_KERNEL must be one of {', '.join(KERNELS)}, got {env!r}")
    if env == "numpy":
        return "numpy"
    if importlib.util.find_spec("numba") is None:
        if env == "numba":
            raise HashingError("KH_SEARCH_KERNEL=numba but numba is not installed "
                               "(pip install numba)")
        return "numpy"
    return "numba"


def enabled() -> bool:
    """Whether the compiled kernel is on (``kernel_name``)."""
    return kernel_name() == "numba"


def use_for(work: int) -> bool:
    """Whether a scan of ``work`` (queries x codes x 64-bit words) runs compiled: the
    kernel is on, and it is loaded already or the scan is big enough to pay for loading
    it (numba's import and the cached kernels, about 0.7 s here). A one-off search of a
    few queries in a new process (the CLI's ``search``) stays on numpy, whose answer is
    the same; ``serve`` loads the kernel at start-up (``load``)."""
    return enabled() and (_compiled.cache_info().currsize > 0 or work >= MIN_KERNEL_WORK)


def load() -> bool:
    """Load (or compile, once per machine) the kernels now, where they are on; whether
    they are."""
    return enabled() and _compiled() is not None


def top_k_words(qwords, words, k: int, bits: int):
    """(distances int32 (Q, k), positions int64 (Q, k)) of the k nearest of ``words``
    ((W, N) uint64 columns, ``codes.word_columns``) to each query ((W, Q) uint64);
    k <= N. Ties by position."""
    state = TopKState(qwords.shape[1], k, bits)
    state.scan(qwords, words)
    return state.result()


class TopKState:
    """The running top k of a block of queries over database chunks scanned in position
    order (a memory-mapped index is converted and scanned a chunk at a time)."""

    def __init__(self, queries: int, k: int, bits: int):
        self.k, self.bits = int(k), int(bits)
        capacity = max(4 * self.k, 64)
        self.buf_d = np.empty((queries, capacity), np.int32)
        self.buf_p = np.empty((queries, capacity), np.int64)
        self.fill = np.zeros(queries, np.int64)
        self.hist = np.zeros((queries, self.bits + 2), np.int64)
        self.cut = np.full(queries, self.bits + 1, np.int64)

    def scan(self, qwords, words, start=0, stop=None, offset=0) -> None:
        """Scan codes start:stop of ``words`` (C-contiguous (W, N) uint64: a slice would
        be copied), whose position is offset + index, after those scanned before."""
        stop = words.shape[1] if stop is None else stop
        _compiled()["top_k"](np.ascontiguousarray(qwords, np.uint64),
                             np.ascontiguousarray(words, np.uint64), int(start), int(stop),
                             int(offset), self.k, self.buf_d, self.buf_p, self.fill,
                             self.hist, self.cut)

    def result(self):
        out_d = np.empty((len(self.fill), self.k), np.int32)
        out_p = np.empty((len(self.fill), self.k), np.int64)
        _compiled()["finish"](self.k, self.buf_d, self.buf_p, self.fill, out_d, out_p)
        return out_d, out_p


def within_radius_words(qwords, words, radius: int, bits: int, offset=0):
    """(counts (Q,), distances int32, positions int64) of every code within ``radius``
    of each query, query by query, each sorted by (distance, position); positions are
    offset + index."""
    return _compiled()["radius"](
        np.ascontiguousarray(qwords, np.uint64), np.ascontiguousarray(words, np.uint64),
        0, words.shape[1], int(offset), int(radius), int(bits))


@functools.lru_cache(maxsize=None)
def _compiled():
    """The compiled functions (``kernel_numba``), or None without numba. Compiled, or
    loaded from numba's cache, on first use: importing search never pays for it."""
    try:
        from keras_hashing.search import kernel_numba
    except ImportError:
        return None
    return {"top_k": kernel_numba.top_k, "finish": kernel_numba.finish,
            "radius": kernel_numba.radius}
