"""Exact multi-index hashing (Norouzi, Punjani, Fleet, CVPR 2012 / TPAMI 2014), numpy only.

A K-bit code is cut into m disjoint substrings. If two codes are within Hamming distance
r, then by the pigeonhole principle at least one of their substrings is within
floor(r / m). So each substring gets a table (its values sorted, with the code positions
in that order), and a query probes, in every table, the substring values within
floor(r / m) of its own; every code found is a *candidate*, verified on its full code.

* radius search r: probe radius floor(r / m) in every table; exact.
* k-NN: probe substring radius rho = 0, 1, 2, ... (only the new ring each time), table
  by table. After ring rho of table j every code within m rho + j of the query has been
  found, so a query is done once it holds k verified results that close; exact, ties by
  position like the linear scan.
* A code found through several tables is counted once: its substring distances say at
  which probe step it was first reachable, so candidates are never sorted to dedupe.
* Queries whose buckets would cost more than a scan are answered by one scan at the end,
  and a large k-NN batch is routed by timing both ways on its first queries.
* A trained model's codes repeat (a few thousand codes, each thousands of times). When at
  most half the codes are distinct, k-NN probes tables of the distinct codes, each
  standing for its positions: a bucket of 50k copies is one candidate, not 50k.

m defaults to round(K / log2 N) (Norouzi's choice: substrings about log2 N bits long, so
a bucket holds about one code of a uniform database). Codes from a trained model are
skewed (some buckets hold thousands), which costs candidates; both are measured in
tools/bench_search.py.

Everything is vectorised over queries; a table is two arrays (sorted substring values,
positions in that order) of 4 + 4 bytes per code.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> codes = rng.integers(0, 256, (1000, 4), dtype=np.uint8)   # 32-bit codes
    >>> mih = MultiIndex(codes, bits=32)
    >>> lims, dist, pos = mih.within_radius(codes[:2], 0)
    >>> pos[lims[0]:lims[1]].tolist(), pos[lims[1]:lims[2]].tolist()
    ([0], [1])
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from keras_hashing.search import scan

# Substrings are at most 32 bits (table values are uint32). A substring of up to
# DIRECT_BITS bits gets a direct-address bucket table (2^s + 1 offsets: two gathers per
# probe, 16 MiB at 22 bits); a longer one is found by binary search over its sorted values.
MAX_SUBSTRING_BITS = 32
DIRECT_BITS = 22
# A query whose candidates would pass this fraction of the database is answered by the
# linear scan instead: handling a candidate in numpy costs about 100x a scanned code.
SCAN_FALLBACK = 0.01
# k-NN over many queries first times MIH and the scan on this many queries each, and sends
# the rest to whichever was faster: when most queries fall back anyway (uniform codes,
# where the k-th neighbour is far), probing them first only adds time. Both are exact.
CALIBRATION_QUERIES = 32
# ...unless probing took under this many seconds per query and database code: the scan
# costs about 1e-9 (1.1 to 1.9 ns per 64-bit code on the 2-core AVX2 box, see
# docs/SCALING.md), so timing it would only cost its share of the queries.
CLEAR_WIN_SECONDS_PER_CODE = 1e-10
# k-NN runs over the distinct codes (each with its positions) when they are at most this
# share of the index: a trained model's codes repeat, and one bucket of 50k copies of a
# code costs a probe 50k candidates but the distinct table one.
DISTINCT_SHARE = 0.5
_CHUNK = 1 << 16


def distinct_codes(db: "scan.Database"):
    """Group equal codes: (first position of each distinct code, counts, offsets into
    positions, positions), positions ascending within each group.

    Example:
        >>> import numpy as np
        >>> db = scan.Database(np.array([[3], [1], [3], [3]], np.uint8), 8)
        >>> first, counts, offsets, positions = distinct_codes(db)
        >>> first.tolist(), counts.tolist(), positions.tolist()
        ([1, 0], [1, 3], [1, 0, 2, 3])
    """
    words = db.words
    # stable: equal codes keep ascending positions
    order = (np.argsort(words[0], kind="stable") if words.shape[0] == 1
             else np.lexsort(words[::-1]))
    ordered = words[:, order]
    starts = np.ones(db.n, bool)
    if db.n:
        starts[1:] = (ordered[:, 1:] != ordered[:, :-1]).any(axis=0)
    offsets = np.append(np.flatnonzero(starts), db.n).astype(np.int64)
    return order[offsets[:-1]], np.diff(offsets), offsets, order


def default_tables(bits: int, n: int) -> int:
    """round(bits / log2 n), at least 1 and enough that no substring exceeds 32 bits."""
    m = round(bits / max(1.0, math.log2(max(n, 2))))
    return int(min(bits, max(m, 1, math.ceil(bits / MAX_SUBSTRING_BITS))))


def substring_bounds(bits: int, tables: int) -> list:
    """[(first bit, last bit + 1), ...]: m nearly equal, contiguous substrings."""
    base, extra = divmod(bits, tables)
    bounds, start = [], 0
    for j in range(tables):
        length = base + (1 if j < extra else 0)
        bounds.append((start, start + length))
        start += length
    return bounds


def substring_values(packed: np.ndarray, bits: int, bounds) -> np.ndarray:
    """(m, N) uint32: each code's substring values (bit order of ``np.packbits``)."""
    packed = np.asarray(packed, np.uint8)
    out = np.empty((len(bounds), packed.shape[0]), np.uint32)
    for s in range(0, packed.shape[0], _CHUNK):
        unpacked = np.unpackbits(packed[s:s + _CHUNK], axis=1)[:, :bits].astype(np.uint64)
        for j, (a, b) in enumerate(bounds):
            weights = np.left_shift(np.uint64(1), np.arange(b - a - 1, -1, -1, dtype=np.uint64))
            out[j, s:s + _CHUNK] = (unpacked[:, a:b] @ weights).astype(np.uint32)
    return out


def ring_masks(length: int, rho: int) -> np.ndarray:
    """uint32 masks with exactly ``rho`` of ``length`` bits set (the ring at distance rho)."""
    if rho > length:
        return np.zeros(0, np.uint32)
    masks = [sum(1 << i for i in combo) for combo in itertools.combinations(range(length), rho)]
    return np.asarray(masks, np.uint32)


def _expand_ranges(lo, hi, owners):
    """All integers in [lo_i, hi_i) for each i, with the owner of each: vectorised."""
    sizes = hi - lo
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keep = sizes > 0
    lo, sizes, owners = lo[keep], sizes[keep], owners[keep]
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return starts + np.arange(total), np.repeat(owners, sizes)


class MultiIndex:
    """The m substring tables over a fixed set of packed codes.

    Args:
        codes: (N, ceil(bits/8)) uint8 packed codes.
        bits: code length.
        tables: m; None = ``default_tables(bits, N)``.
        distinct: also build tables over the distinct codes when at most
            ``DISTINCT_SHARE`` x N are distinct (k-NN then probes those).
        groups: for tables over distinct codes: (counts, starts, positions), entry e
            standing for ``positions[starts[e]:starts[e] + counts[e]]`` of ``scan_db``.
        scan_db: the full database those positions index (what a fallback scans).
    """

    def __init__(self, codes, bits: int, tables=None, distinct=True, groups=None,
                 scan_db=None):
        codes = np.asarray(codes, np.uint8)
        self.bits = int(bits)
        self.n = codes.shape[0]
        self.tables = int(tables) if tables else default_tables(self.bits, self.n)
        if not 1 <= self.tables <= self.bits:
            raise ValueError(f"tables must be in 1..{self.bits}, got {self.tables}")
        self.bounds = substring_bounds(self.bits, self.tables)
        if max(b - a for a, b in self.bounds) > MAX_SUBSTRING_BITS:
            raise ValueError(f"substrings of more than {MAX_SUBSTRING_BITS} bits: use at "
                             f"least {math.ceil(self.bits / MAX_SUBSTRING_BITS)} tables")
        self.db = scan.Database(codes, self.bits)
        self.words = self.db.words
        self.fallbacks = 0  # queries handed to the linear scan by top_k (for benchmarks)
        # On tables of distinct codes (see ``distinct``): each entry's multiplicity and
        # positions, and the full database the scan falls back to.
        self.groups = groups
        self.scan_db = self.db if scan_db is None else scan_db
        self.total = self.scan_db.n
        # Per word of the code: (table, mask of its substring's bits in that word), to
        # read a candidate's substring distances off the XOR of the full codes.
        self.word_masks = [[] for _ in range(self.db.nwords)]
        for j, (a, b) in enumerate(self.bounds):
            row = np.zeros((1, self.bits), np.uint8)
            row[0, a:b] = 1
            for w, mask in enumerate(scan.word_columns(np.packbits(row, axis=1))[:, 0]):
                if mask:
                    self.word_masks[w].append((j, mask))
        values = substring_values(codes, self.bits, self.bounds)
        self.order = [np.argsort(v, kind="stable").astype(np.int32 if self.n < 2**31
                                                          else np.int64) for v in values]
        self.sorted_values = [v[o] for v, o in zip(values, self.order)]
        self.offsets = [
            np.searchsorted(v, np.arange((1 << (b - a)) + 1, dtype=np.uint64)).astype(
                self.order[0].dtype) if b - a <= DIRECT_BITS else None
            for v, (a, b) in zip(self.sorted_values, self.bounds)]
        # the sorted values are only needed where there is no direct table
        self.sorted_values = [v if off is None else None
                              for v, off in zip(self.sorted_values, self.offsets)]
        self.distinct = self._distinct_tables(tables) if distinct else None

    def _distinct_tables(self, tables):
        """Tables over the distinct codes for k-NN, or None when codes rarely repeat."""
        first, counts, offsets, positions = distinct_codes(self.db)
        if first.size > DISTINCT_SHARE * self.n:
            return None
        return MultiIndex(np.asarray(self.db.codes)[first], self.bits,
                          tables=tables or default_tables(self.bits, first.size),
                          distinct=False, groups=(counts, offsets[:-1], positions),
                          scan_db=self.db)

    @property
    def nbytes(self) -> int:
        """Memory of the tables (on top of the codes themselves)."""
        arrays = self.order + self.sorted_values + self.offsets + list(self.groups or [])
        own = int(sum(a.nbytes for a in arrays if a is not None))
        if self.distinct is None:
            return own
        return own + self.distinct.nbytes + self.distinct.words.nbytes

    def _ranges(self, qvalues, rows, rho, j):
        """Bucket ranges [lo, hi) of table j's ring rho around each query of ``rows``,
        with the query row owning each range."""
        a, b = self.bounds[j]
        masks = ring_masks(b - a, rho)
        if masks.size == 0:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        probes = (qvalues[j, rows][:, None] ^ masks[None, :]).ravel()
        owners = np.repeat(rows, masks.size)
        if self.offsets[j] is not None:
            lo, hi = self.offsets[j][probes], self.offsets[j][probes.astype(np.int64) + 1]
        else:
            lo = np.searchsorted(self.sorted_values[j], probes, side="left")
            hi = np.searchsorted(self.sorted_values[j], probes, side="right")
        return lo.astype(np.int64), hi.astype(np.int64), owners

    def _gather(self, j, lo, hi, owners):
        """(query row, position) of every code in the given bucket ranges of table j."""
        idx, who = _expand_ranges(lo, hi, owners)
        return who, self.order[j][idx].astype(np.int64)

    def _ring_too_large(self, rho) -> bool:
        """More probe values in ring rho of the longest substring than codes in the index:
        enumerating it would cost more than a scan (and C(32, 16) masks would not fit in
        memory), so the caller scans instead."""
        longest = max(b - a for a, b in self.bounds)
        return rho <= longest and math.comb(longest, rho) > max(self.total, 64)

    def candidate_counts(self, qvalues, rows, max_rho, nq):
        """Work each query would cost through rings 0..max_rho of every table: probes plus
        candidates (duplicates included), from bucket sizes alone: nothing is gathered."""
        counts = np.zeros(nq, np.int64)
        for rho in range(max_rho + 1):
            for j in range(self.tables):
                lo, hi, owners = self._ranges(qvalues, rows, rho, j)
                # probes + candidates: each costs about the same in numpy
                counts += np.bincount(owners, weights=hi - lo + 1, minlength=nq).astype(np.int64)
        return counts

    def within_radius(self, queries, radius: int):
        """(lims, distances, positions) of every code within ``radius``: exact.

        A query whose buckets hold more than ``SCAN_FALLBACK`` x N codes (skewed codes,
        large radii) is answered by the linear scan instead, which is then cheaper.
        """
        queries = np.asarray(queries, np.uint8)
        nq = queries.shape[0]
        qvalues = substring_values(queries, self.bits, self.bounds)
        rows_all = np.arange(nq, dtype=np.int64)
        max_rho = radius // self.tables
        if any(self._ring_too_large(rho) for rho in range(max_rho + 1)):
            self.fallbacks += nq
            return scan.within_radius(self.db, queries, radius)
        heavy = self.candidate_counts(qvalues, rows_all, max_rho, nq) > SCAN_FALLBACK * self.n
        light = rows_all[~heavy]
        qw = scan.word_columns(queries)
        rows, pos, dist = [], [], []
        for rho in range(0, max_rho + 1):
            for j in range(self.tables):
                r, p = self._gather(j, *self._ranges(qvalues, light, rho, j))
                r, p, d = self._first_reached(qw, rho, j, r, p)
                rows.append(r)
                pos.append(p)
                dist.append(d)
        rows, pos, dist = np.concatenate(rows), np.concatenate(pos), np.concatenate(dist)
        keep = dist <= radius
        rows, pos, dist = rows[keep], pos[keep], dist[keep]
        lists = _as_lists(nq, rows, pos, dist)
        if heavy.any():
            self.fallbacks += int(heavy.sum())
            heavy_rows = rows_all[heavy]
            lists = _fill_rows(lists, heavy_rows,
                               scan.within_radius(self.db, queries[heavy_rows], radius))
        return lists

    def _first_reached(self, qw, rho, j, rows, pos):
        """Candidates (rows, positions) from ring rho of table j, less those an earlier
        probe step already reached, with their full distances.

        Steps run ring by ring and, within a ring, table by table, so a code is first
        reached at the smallest (substring distance, table): it is kept here only if no
        earlier table is within rho of the query and no later table within rho - 1. Each
        code is then counted once without sorting the candidates.
        """
        dist = np.zeros(rows.size, np.int64)
        sub = np.zeros((self.tables, rows.size), np.int64)
        for w in range(qw.shape[0]):
            diff = qw[w][rows] ^ self.words[w][pos]
            dist += np.bitwise_count(diff)
            for table, mask in self.word_masks[w]:
                sub[table] += np.bitwise_count(diff & mask)
        first = (sub[:j] > rho).all(axis=0) & (sub[j + 1:] >= rho).all(axis=0)
        return rows[first], pos[first], dist[first]

    def top_k(self, queries, k: int):
        """Exact k nearest codes (distances int32 (Q, k'), positions (Q, k')), k' = min(k, N);
        ties by position.

        With at least 4 x ``CALIBRATION_QUERIES`` queries, the first batch is answered by
        probing and the second by the scan, both timed; the rest go the faster way. Where
        probing the first batch was clearly faster than any scan could be, the scan is not
        timed.
        """
        queries = np.asarray(queries, np.uint8)
        cal = CALIBRATION_QUERIES
        if queries.shape[0] < 4 * cal or cal < 1:
            return self._probe_top_k_any(queries, k)
        start = time.perf_counter()
        probed = self._probe_top_k_any(queries[:cal], k)
        probe_s = time.perf_counter() - start
        if probe_s < CLEAR_WIN_SECONDS_PER_CODE * cal * self.n:
            rest = self._probe_top_k_any(queries[cal:], k)
            return tuple(np.concatenate(parts) for parts in zip(probed, rest))
        start = time.perf_counter()
        scanned = scan.top_k(self.db, queries[cal:2 * cal], k)
        scan_s = time.perf_counter() - start
        self.fallbacks += cal
        if scan_s < probe_s:
            rest = scan.top_k(self.db, queries[2 * cal:], k)
            self.fallbacks += queries.shape[0] - 2 * cal
        else:
            rest = self._probe_top_k_any(queries[2 * cal:], k)
        return tuple(np.concatenate(parts) for parts in zip(probed, scanned, rest))

    def _probe_top_k_any(self, queries, k):
        """``_probe_top_k`` over the distinct codes where they were tabled, else over all."""
        if self.distinct is None:
            return self._probe_top_k(queries, k)
        result = self.distinct._probe_top_k(queries, k)
        self.fallbacks += self.distinct.fallbacks
        self.distinct.fallbacks = 0
        return result

    def _probe_top_k(self, queries, k: int):
        """``top_k`` by probing the tables (heavy queries still go to the scan).

        Probes go ring by ring, table by table (``_probe_rings``); then one sort picks
        each query's k (``_k_smallest``). Over distinct codes (``groups`` set), an entry
        counts as many codes as it stands for and becomes its first k positions.
        """
        queries = np.asarray(queries, np.uint8)
        nq = queries.shape[0]
        k = min(int(k), self.total)
        out_d = np.zeros((nq, k), np.int32)
        out_p = np.zeros((nq, k), np.int64)
        if k == 0 or nq == 0:
            return out_d, out_p
        found, hist, scanned = self._probe_rings(queries, k)
        if found[0].size:
            answered = np.flatnonzero(~scanned)
            out_d[answered], out_p[answered] = self._k_smallest(found, hist, scanned, k)
        if scanned.any():
            rows = np.flatnonzero(scanned)
            out_d[rows], out_p[rows] = scan.top_k(self.scan_db, queries[rows], k)
        return out_d, out_p

    def _probe_rings(self, queries, k: int):
        """Probe until every query holds k results it is sure of, or goes to the scan.

        Returns the (rows, positions, distances) found, each counted once (a code reached
        again through a later step is dropped by its substring distances), the per-query
        histogram of found distances, and the mask of queries left to the scan.
        """
        nq = queries.shape[0]
        qvalues = substring_values(queries, self.bits, self.bounds)
        qw = scan.word_columns(queries)
        pending = np.arange(nq, dtype=np.int64)
        scanned = np.zeros(nq, bool)
        found_rows, found_pos, found_dist = [], [], []
        hist = np.zeros((nq, self.bits + 2), np.int64)  # found codes per (query, distance)
        work = np.zeros(nq, np.int64)
        max_rho = max(b - a for a, b in self.bounds)

        def send_to_scan(rows):  # answered at the end, all in one scan
            scanned[rows] = True
            self.fallbacks += int(rows.size)

        # Step (rho, j) probes ring rho of table j. After it, every code within
        # m rho + j has been found: a code not yet found has substring distance > rho in
        # tables 0..j and >= rho in the rest, so its distance is at least m rho + j + 1.
        for rho in range(0, max_rho + 1):
            if self._ring_too_large(rho):  # probing would cost more than scanning
                send_to_scan(pending)
                break
            for j in range(self.tables):
                lo, hi, owners = self._ranges(qvalues, pending, rho, j)
                # Skewed codes (a trained model's) fill some buckets with thousands of
                # codes: a query about to pass SCAN_FALLBACK x N candidates is finished by
                # the linear scan, which is then cheaper.
                # work so far = probes made + candidates handled (both cost about the same)
                work += np.bincount(owners, weights=hi - lo + 1, minlength=nq).astype(np.int64)
                heavy = pending[work[pending] > SCAN_FALLBACK * self.total]
                if heavy.size:
                    send_to_scan(heavy)
                    pending = pending[~scanned[pending]]
                    keep = ~scanned[owners]
                    lo, hi, owners = lo[keep], hi[keep], owners[keep]
                rows, pos = self._gather(j, lo, hi, owners)
                if rows.size:
                    rows, pos, dist = self._first_reached(qw, rho, j, rows, pos)
                    found_rows.append(rows)
                    found_pos.append(pos)
                    found_dist.append(dist)
                    # over distinct codes, an entry counts as many codes as it stands for
                    weights = None if self.groups is None else self.groups[0][pos]
                    counts = np.bincount(rows * hist.shape[1] + dist, weights=weights,
                                         minlength=hist.size)
                    hist += counts.reshape(hist.shape).astype(np.int64, copy=False)
                if rho == max_rho and j == self.tables - 1:  # everything has been found
                    return _joined(found_rows, found_pos, found_dist), hist, scanned
                certain = min(self.tables * rho + j, self.bits)
                pending = pending[hist[pending, :certain + 1].sum(axis=1) < k]
                if pending.size == 0:
                    return _joined(found_rows, found_pos, found_dist), hist, scanned
        return _joined(found_rows, found_pos, found_dist), hist, scanned

    def _k_smallest(self, found, hist, scanned, k: int):
        """The k smallest (distance, position) of every query not left to the scan: all
        codes within its certain radius were found, and its k-th result lies inside it."""
        rows, pos, dist = found
        # only entries within each query's k-th found distance can be among its k
        kth = np.argmax(np.cumsum(hist, axis=1) >= k, axis=1)
        keep = ~scanned[rows] & (dist <= kth[rows])
        rows, pos, dist = rows[keep], pos[keep], dist[keep]
        if self.groups is not None:  # entries -> positions; only k of each can count
            counts, starts, positions = self.groups
            idx, owner = _expand_ranges(starts[pos], starts[pos] + np.minimum(counts[pos], k),
                                        np.arange(pos.size))
            rows, pos, dist = rows[owner], positions[idx].astype(np.int64), dist[owner]
        order = np.lexsort((pos, dist, rows))
        rows, pos, dist = rows[order], pos[order], dist[order]
        take = (np.arange(rows.size) - np.searchsorted(rows, rows, side="left")) < k
        answered = int((~scanned).sum())
        return dist[take].reshape(answered, k), pos[take].reshape(answered, k)


def _joined(rows, pos, dist):
    """Concatenated (rows, positions, distances) of every probe step (empty if none)."""
    if not rows:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return np.concatenate(rows), np.concatenate(pos), np.concatenate(dist)


def _as_lists(nq, rows, pos, dist):
    """FAISS's range-search layout, each query's results by distance then position."""
    order = np.lexsort((pos, dist, rows))
    rows, pos, dist = rows[order], pos[order], dist[order]
    lims = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=nq))]).astype(np.int64)
    return lims, dist.astype(np.int32), pos.astype(np.int64)


def _fill_rows(lists, rows, sub_lists):
    """Range-search lists with the (empty) entries of ``rows`` taken from ``sub_lists``,
    the lists of those rows alone: a linear copy, since both are already sorted."""
    lims, dist, pos = lists
    sub_lims, sub_dist, sub_pos = sub_lists
    counts = np.diff(lims)
    sub_counts = np.diff(sub_lims)
    counts[rows] += sub_counts
    out_lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out_dist = np.empty(out_lims[-1], np.int32)
    out_pos = np.empty(out_lims[-1], np.int64)
    # where each entry goes: its row's new start + its rank within the row
    at = np.arange(dist.size) + np.repeat(out_lims[:-1] - lims[:-1], np.diff(lims))
    out_dist[at], out_pos[at] = dist, pos
    at = np.arange(sub_dist.size) + np.repeat(out_lims[rows] - sub_lims[:-1], sub_counts)
    out_dist[at], out_pos[at] = sub_dist, sub_pos
    return out_lims, out_dist, out_pos
