"""Exhaustive Hamming scans over packed codes, blocked and threaded (numpy, or the
compiled kernel of ``kernel``).

The kernel behind ``HammingIndex.search``: queries are taken a block at a time (tens),
the database a block at a time (thousands of codes, so one block of XOR/popcount results
stays in cache), and each query keeps a running cut-off: once it holds k results, a
later code can only enter with a *strictly* smaller distance (ties go to the earlier
position, and blocks are visited in position order). Survivors are picked with
``np.nonzero`` and the pool is re-ranked only when it has grown, so almost all the time
is spent in three vectorised passes (XOR, popcount, compare) over the database.

Query blocks run on a thread pool: numpy's ufuncs (and the compiled kernel) release the GIL.

Results equal a full sort by (distance, position): exact distances, ties by position.

Example:
    >>> import numpy as np
    >>> db = Database(np.array([[0b11110000], [0b00010000], [0]], np.uint8), bits=4)
    >>> d, pos = top_k(db, np.array([[0]], np.uint8), k=2)
    >>> d.tolist(), pos.tolist()
    ([[0, 1]], [[2, 1]])
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_hashing.codes import word_columns
from keras_hashing.errors import HashingError
from keras_hashing.search import kernel

MAX_THREADS = 256

# Database codes per block and queries per block. Measured on the 2-core box (1M codes,
# 1000 queries, k = 100, tools/bench_search.py's data; seconds, 1 / 2 threads, 64 bits):
# 32 x 16k 1.77 / 1.43, 32 x 8k 1.53 / 0.94, 32 x 4k 1.68 / 1.07, 16 x 4k 2.08 / 1.50.
# A 32 x 8k block keeps each thread's XOR buffer at 2 MiB (16k: 4 MiB each, and two
# threads then fight over the 8 MiB L3), while the inner loop stays long enough:
# numpy's broadcast XOR costs 3x per pair when rows are 2k codes or shorter.
DB_BLOCK = 8192
QUERY_BLOCK = 32
# Codes of the first block whose k-th distance sets each query's first cut-off.
FIRST_CUT_SAMPLE = 4096
# Codes a compiled scan of a memory-mapped index converts to words at a time (8 MiB a
# word): the memory of a scan stays bounded whatever the index's size.
MAPPED_CHUNK = 1 << 20


def block_width(queries: int) -> int:
    """Database codes per block for a block of this many queries: DB_BLOCK for a full
    query block, up to 8x wider for fewer queries, so numpy's per-call overhead stays
    small (one query over 8k codes is a few us of work). Measured, 1M codes, k = 10, one
    thread, ms at 64 / 256 bits: 1 query, 8k-code blocks 3.7 / 8.3, 64k 1.8 / 5.2;
    8 queries, 8k 16.1 / 33.0, 32k 12.5 / 31.6, 64k 11.8 / 31.5, 256k 14.9 / 47.9."""
    return DB_BLOCK * min(8, max(1, QUERY_BLOCK // max(1, queries)))


_POOLS: dict = {}


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """A lasting pool of this many threads: starting one per call costs about 0.5 ms, a
    quarter of a single query's scan over 1M codes. A forked child gets its own."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="kh-scan")
    return _POOLS[key]


def default_threads() -> int:
    """KH_SEARCH_THREADS, else the CPUs this process may use."""
    env = os.environ.get("KH_SEARCH_THREADS")
    if env:
        if not env.strip().isdigit() or not 1 <= int(env) <= MAX_THREADS:
            raise HashingError(f"KH_SEARCH_THREADS must be an integer in 1..{MAX_THREADS}, "
                               f"got {env!r}")
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Database:
    """Packed codes laid out for scanning: one contiguous uint64 array per word.

    Args:
        codes: (N, ceil(bits/8)) uint8 packed codes (``codes.pack_bits`` rows); may be
            a read-only memory map.
        bits: code length.
        in_memory: lay every word out now (N x 8 bytes per word). False keeps the codes
            where they are (a memory-mapped file) and converts one block at a time, so a
            scan never holds more than a block in RAM (about 10% slower).
    """

    def __init__(self, codes, bits: int, in_memory=True):
        self.codes = codes if isinstance(codes, np.memmap) else np.asarray(codes, np.uint8)
        self.bits = int(bits)
        self.n = self.codes.shape[0]
        self.nwords = max(1, -(-self.codes.shape[1] // 8))
        self.words = word_columns(self.codes, self.bits) if in_memory else None
        # Distances above 255 need 16 bits (more than 255 bits, i.e. 4+ words).
        self.dist_dtype = np.uint8 if self.bits <= 255 else np.uint16

    def words_block(self, start, stop) -> np.ndarray:
        """(W, stop - start) uint64 words of codes start:stop."""
        if self.words is not None:
            return self.words[:, start:stop]
        return word_columns(np.asarray(self.codes[start:stop]), self.bits)

    def word_chunks(self, start=0, stop=None):
        """(words, first, last, offset) covering codes start:stop for the compiled
        kernel: the whole in-memory array with the range, or each MAPPED_CHUNK of a
        memory-mapped index converted on its own (positions offset + index)."""
        stop = self.n if stop is None else stop
        if self.words is not None:
            yield self.words, start, stop, 0
            return
        for first in range(start, stop, MAPPED_CHUNK):
            last = min(stop, first + MAPPED_CHUNK)
            yield self.words_block(first, last), 0, last - first, first


class FlatScan:
    """The exhaustive searcher: every code is compared, blocked and threaded. It answers
    the same ``top_k`` / ``within_radius`` as ``mih.MultiIndex`` (positions, ties by
    position), so ``HammingIndex`` holds either.

    Example:
        >>> flat = FlatScan(np.array([[0b11110000], [0]], np.uint8), bits=4)
        >>> [a.tolist() for a in flat.top_k(np.array([[0]], np.uint8), k=1)]
        [[[0]], [[1]]]
    """

    def __init__(self, codes, bits: int, threads=None):
        self.db = Database(codes, bits, in_memory=not isinstance(codes, np.memmap))
        self.threads = threads

    def top_k(self, queries, k: int):
        return top_k(self.db, queries, k, threads=self.threads)

    def within_radius(self, queries, radius: int):
        return within_radius(self.db, queries, radius, threads=self.threads)


def _block_distances(qwords, db, start, stop, out, tmp, counts):
    """Fill out[:, :stop-start] with the distances of the query block to codes start:stop.

    ``tmp`` (uint64) and ``counts`` (uint8) are scratch buffers of the block's shape, so
    the loop allocates nothing.
    """
    width = stop - start
    o, t, c = out[:, :width], tmp[:, :width], counts[:, :width]
    words = db.words_block(start, stop)
    for w in range(len(qwords)):
        np.bitwise_xor(qwords[w][:, None], words[w][None, :], out=t)
        if w == 0:
            if o.dtype == np.uint8:
                np.bitwise_count(t, out=o)
            else:
                np.bitwise_count(t, out=c)
                np.copyto(o, c)
        else:
            np.bitwise_count(t, out=c)
            np.add(o, c, out=o)
    return o


def _scratch(nq, width, dist_dtype):
    return (np.empty((nq, width), dist_dtype), np.empty((nq, width), np.uint64),
            np.empty((nq, width), np.uint8))


def _top_k_block(db: Database, qwords, k: int):
    """Exact top-k of one query block; returns (distances int32, positions int64)."""
    nq = qwords.shape[1]
    n = db.n
    span = n + 1  # pool keys: (row * (bits + 1) + distance) * span + position
    width = block_width(nq)
    scratch = _scratch(nq, min(width, n), db.dist_dtype)
    cut = np.full(nq, db.bits + 1, np.int64)  # a code survives when distance < cut
    # The same cut-offs in the distances' dtype, as a column (compared without casting);
    # only exact while bits + 1 fits the dtype, else compare against the int64 column.
    cut_col = np.minimum(cut, np.iinfo(db.dist_dtype).max).astype(db.dist_dtype)[:, None]
    small_cut = db.bits + 1 <= np.iinfo(db.dist_dtype).max
    mask_buf = np.empty((nq, min(width, n)), bool)
    pool = []
    pooled = 0

    def rank(keys):
        """Keep the k best per row; tighten each full row's cut-off to its k-th distance."""
        keys = np.sort(keys)
        rows = keys // ((db.bits + 1) * span)
        first = np.searchsorted(rows, np.arange(nq))
        rank_in_row = np.arange(keys.size) - first[rows]
        keys = keys[rank_in_row < k]
        rows = keys // ((db.bits + 1) * span)
        counts = np.bincount(rows, minlength=nq)
        last = np.cumsum(counts) - 1
        full = counts >= k
        kth = (keys[last[full]] // span) % (db.bits + 1)
        cut[full] = kth
        cut_col[:, 0] = np.minimum(cut, np.iinfo(db.dist_dtype).max)
        return keys

    for start in range(0, n, width):
        stop = min(n, start + width)
        dist = _block_distances(qwords, db, start, stop, *scratch)
        if start == 0 and stop - start > FIRST_CUT_SAMPLE > k:
            # First block: the k-th smallest distance among its first codes bounds the
            # final k-th from above; codes must beat or tie it until the pool is re-ranked.
            head = dist[:, :FIRST_CUT_SAMPLE]
            cut[:] = np.partition(head, k - 1, axis=1)[:, k - 1].astype(np.int64) + 1
            cut_col[:, 0] = np.minimum(cut, np.iinfo(db.dist_dtype).max)
        width = stop - start
        mask = mask_buf[:, :width]
        np.less(dist, cut_col if small_cut else cut[:, None], out=mask)
        # 1-D flatnonzero is several times faster than a 2-D nonzero
        rows, cols = np.divmod(np.flatnonzero(mask), width)
        if rows.size:
            d = dist[rows, cols].astype(np.int64)
            pool.append((rows * (db.bits + 1) + d) * span + (cols + start))
            pooled += rows.size
        if pooled > 4 * nq * k:  # re-rank: drop what cannot make the top k any more
            pool = [rank(np.concatenate(pool))]
            pooled = pool[0].size
    keys = rank(np.concatenate(pool)) if pool else np.zeros(0, np.int64)
    rows = keys // ((db.bits + 1) * span)
    counts = np.bincount(rows, minlength=nq)
    kk = min(k, n)
    assert np.all(counts == kk), "every row must hold k results"
    keys = keys.reshape(nq, kk)
    return ((keys // span) % (db.bits + 1)).astype(np.int32), (keys % span).astype(np.int64)


def query_blocks(nq: int, threads: int) -> list:
    """(start, stop) of the query blocks: at most QUERY_BLOCK queries each, and at least
    one block per thread while there are queries to share (a batch of 16 on two threads
    runs as two blocks of 8, each over wider database blocks)."""
    count = max(-(-nq // QUERY_BLOCK), min(threads, nq))
    bounds = np.linspace(0, nq, count + 1).round().astype(int)
    return [(int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


def query_words(queries: np.ndarray, nwords: int) -> np.ndarray:
    """(W, Q) uint64 words of packed queries, like ``word_columns``."""
    q = word_columns(queries)
    if q.shape[0] != nwords:
        raise ValueError("query and database code sizes differ")
    return q


def top_k(db: Database, queries, k: int, threads=None):
    """The k nearest codes of every query: (distances int32 (Q, k'), positions (Q, k')).

    k' = min(k, N); equal distances are ordered by position. Threads take query blocks;
    with the compiled kernel (``kernel``), a few queries split the database between the
    threads instead (one query then runs on every core).
    """
    queries = np.asarray(queries, np.uint8)
    nq = queries.shape[0]
    k = min(int(k), db.n)
    if nq == 0 or k == 0:
        return np.zeros((nq, k), np.int32), np.zeros((nq, k), np.int64)
    qw = query_words(queries, db.nwords)
    threads = default_threads() if threads is None else max(1, int(threads))
    if kernel.use_for(nq * db.n * db.nwords):
        return _compiled_top_k(db, qw, k, threads)
    blocks = query_blocks(nq, threads)
    out_d = np.empty((nq, k), np.int32)
    out_p = np.empty((nq, k), np.int64)

    def work(bounds):
        s, e = bounds
        out_d[s:e], out_p[s:e] = _top_k_block(db, qw[:, s:e], k)

    _run(work, blocks, threads)
    return out_d, out_p


def _run(work, parts, threads) -> list:
    """work(part) for every part, on the thread pool when there are several."""
    if threads == 1 or len(parts) == 1:
        return [work(p) for p in parts]
    return list(thread_pool(min(threads, len(parts))).map(work, parts))


def _compiled_top_k(db: Database, qw, k: int, threads: int):
    nq = qw.shape[1]

    def scan_codes(queries, start, stop):
        state = kernel.TopKState(queries[1] - queries[0], min(k, stop - start), db.bits)
        for words, first, last, offset in db.word_chunks(start, stop):
            state.scan(qw[:, queries[0]:queries[1]], words, first, last, offset)
        return state.result()

    if threads == 1 or nq > QUERY_BLOCK or nq * db.n * db.nwords < kernel.MIN_SPLIT_WORDS:
        out = _run(lambda b: scan_codes(b, 0, db.n), query_blocks(nq, threads), threads)
        return np.concatenate([d for d, _ in out]), np.concatenate([p for _, p in out])
    # A few queries (one query block): each thread scans a share of the database for all
    # of them, so the database is read once, not once a thread; each share's top k
    # holds the share's part of the overall top k.
    bounds = np.linspace(0, db.n, threads + 1).round().astype(int)
    shares = _run(lambda i: scan_codes((0, nq), int(bounds[i]), int(bounds[i + 1])),
                  list(range(threads)), threads)
    d = np.concatenate([s[0] for s in shares], axis=1)
    p = np.concatenate([s[1] for s in shares], axis=1)
    order = np.lexsort((p, d), axis=1)[:, :k]  # by distance, then position
    return np.take_along_axis(d, order, 1), np.take_along_axis(p, order, 1)


def within_radius(db: Database, queries, radius: int, threads=None):
    """Every code within ``radius`` of each query: (lims, distances, positions), FAISS's
    range-search layout, each query's results sorted by distance then position."""
    queries = np.asarray(queries, np.uint8)
    nq = queries.shape[0]
    qw = query_words(queries, db.nwords) if nq else None
    threads = default_threads() if threads is None else max(1, int(threads))
    blocks = query_blocks(nq, threads)
    width = db.bits + 1

    def compiled(bounds):
        s, e = bounds
        parts = [kernel.within_radius_words(qw[:, s:e], words, radius, db.bits, offset)
                 for words, _, _, offset in db.word_chunks()]
        if len(parts) == 1:
            return parts[0]
        # chunks in position order: a stable sort on (query, distance) orders them all
        rows = np.concatenate([np.repeat(np.arange(e - s), c) for c, _, _ in parts])
        dist = np.concatenate([d for _, d, _ in parts])
        order = np.argsort(rows * width + dist, kind="stable")
        return (sum(c for c, _, _ in parts), dist[order],
                np.concatenate([p for _, _, p in parts])[order])

    def work(bounds):
        s, e = bounds
        block = block_width(e - s)
        scratch = _scratch(e - s, min(block, db.n), db.dist_dtype)
        # (row, distance) as one small key; blocks run in position order, so a stable
        # sort on the key alone orders each row by (distance, position). int16 keys sort
        # by radix in numpy: linear time, which matters when radii return millions.
        key_dtype = np.int16 if (e - s) * width <= np.iinfo(np.int16).max else np.int64
        keys, positions = [], []
        for start in range(0, db.n, block):
            stop = min(db.n, start + block)
            dist = _block_distances(qw[:, s:e], db, start, stop, *scratch)
            rows, cols = np.divmod(np.flatnonzero(dist <= radius), stop - start)
            keys.append((rows * width + dist[rows, cols]).astype(key_dtype))
            positions.append(cols + start)
        key = np.concatenate(keys) if keys else np.zeros(0, key_dtype)
        order = np.argsort(key, kind="stable")
        key = key[order].astype(np.int64)
        pos = (np.concatenate(positions)[order] if keys else np.zeros(0)).astype(np.int64)
        return np.bincount(key // width, minlength=e - s), key % width, pos

    if db.n == 0 or nq == 0:
        return np.zeros(nq + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
    results = _run(compiled if kernel.use_for(nq * db.n * db.nwords) else work, blocks,
                   threads)
    counts = np.concatenate([r[0] for r in results])
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return (lims, np.concatenate([r[1] for r in results]).astype(np.int32),
            np.concatenate([r[2] for r in results]).astype(np.int64))
