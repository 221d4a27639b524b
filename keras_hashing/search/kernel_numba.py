"""numba-compiled Hamming scan kernels (see ``kernel``, which imports this module only
when numba is installed and the kernel is on). ``cache=True``: compiled once per machine
and numba version, then loaded from numba's cache directory.
"""

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

# Codes per inner block: the block's words (a few KiB a word) and its distances stay in
# L1 while every query of the query block runs over them.
CODE_BLOCK = 2048
# Distances checked for a survivor at once before the per-code loop looks at them.
SURVIVOR_CHECK = 128

jit = numba.njit(nogil=True, cache=True, boundscheck=False)


@intrinsic
def popcount(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen


@jit
def distances(qwords, q, words, start, stop, dist):
    """dist[:stop - start] = Hamming distances of query q to codes start:stop.

    Rows are sliced first: indexing row[start + i] makes numba wrap negative indices,
    and the loop then gathers instead of loading (5x slower, measured). Two and four
    words (128 and 256 bits) are summed in one pass: one store a code, and the words'
    streams read side by side (256 bits, one query over 1M codes: 1.3-1.8 ms against
    2.3-2.6 ms word by word).
    """
    m = stop - start
    nwords = qwords.shape[0]
    if nwords == 2:
        r0, r1 = words[0, start:stop], words[1, start:stop]
        q0, q1 = qwords[0, q], qwords[1, q]
        for i in range(m):
            dist[i] = np.int32(popcount(q0 ^ r0[i]) + popcount(q1 ^ r1[i]))
        return
    if nwords == 4:
        r0, r1 = words[0, start:stop], words[1, start:stop]
        r2, r3 = words[2, start:stop], words[3, start:stop]
        q0, q1, q2, q3 = qwords[0, q], qwords[1, q], qwords[2, q], qwords[3, q]
        for i in range(m):
            dist[i] = np.int32(popcount(q0 ^ r0[i]) + popcount(q1 ^ r1[i])
                               + popcount(q2 ^ r2[i]) + popcount(q3 ^ r3[i]))
        return
    row = words[0, start:stop]
    qv = qwords[0, q]
    for i in range(m):
        dist[i] = np.int32(popcount(qv ^ row[i]))
    for w in range(1, nwords):
        row = words[w, start:stop]
        qv = qwords[w, q]
        for i in range(m):
            dist[i] += np.int32(popcount(qv ^ row[i]))


@jit
def any_below(dist, start, stop, limit):
    """Whether some dist[start:stop] < limit: a vectorised count, so the branchy survivor
    loop runs only over the few stretches that hold one."""
    view = dist[start:stop]
    found = 0
    for i in range(stop - start):
        found += view[i] < limit
    return found > 0


@jit
def new_cut(hist_q, k, cut):
    """The smallest distance whose cumulative count reaches k (codes at it or above
    can no longer enter), else the current cut."""
    total = 0
    for t in range(cut):
        total += hist_q[t]
        if total >= k:
            return t
    return cut


@jit
def compact(q, k, buf_d, buf_p, fill, hist, cut):
    """Drop what can no longer make the top k: distances above the cut, and at the
    cut those after the first (k - codes below it), in position order."""
    c = cut[q]
    need = k
    for t in range(c):
        need -= hist[q, t]
    kept = 0
    for j in range(fill[q]):
        d = buf_d[q, j]
        if d < c or (d == c and need > 0):
            if d == c:
                need -= 1
            buf_d[q, kept] = d
            buf_p[q, kept] = buf_p[q, j]
            kept += 1
        else:
            hist[q, d] -= 1
    fill[q] = kept


@jit
def top_k(qwords, words, first, last, offset, k, buf_d, buf_p, fill, hist, cut):
    """Scan codes first:last of ``words`` (position = offset + index) into the state."""
    nq = qwords.shape[1]
    capacity = buf_d.shape[1]
    dist = np.empty(CODE_BLOCK, np.int32)
    for start in range(first, last, CODE_BLOCK):
        stop = min(last, start + CODE_BLOCK)
        for q in range(nq):
            distances(qwords, q, words, start, stop, dist)
            c = cut[q]
            for sub in range(0, stop - start, SURVIVOR_CHECK):
                end = min(stop - start, sub + SURVIVOR_CHECK)
                if not any_below(dist, sub, end, c):
                    continue
                for i in range(sub, end):
                    d = dist[i]
                    if d < c:
                        if fill[q] == capacity:
                            compact(q, k, buf_d, buf_p, fill, hist, cut)
                        j = fill[q]
                        buf_d[q, j] = d
                        buf_p[q, j] = offset + start + i
                        fill[q] = j + 1
                        hist[q, d] += 1
                        c = new_cut(hist[q], k, c)
                        cut[q] = c


@jit
def finish(k, buf_d, buf_p, fill, out_d, out_p):
    """Each query's buffer by (distance, position): a counting sort on the distance
    keeps the buffer's position order within a distance."""
    nq = buf_d.shape[0]
    for q in range(nq):
        top = 0
        for j in range(fill[q]):
            if buf_d[q, j] > top:
                top = buf_d[q, j]
        starts = np.zeros(top + 2, np.int64)
        for j in range(fill[q]):
            starts[buf_d[q, j] + 1] += 1
        for t in range(1, top + 2):
            starts[t] += starts[t - 1]
        for j in range(fill[q]):
            d = buf_d[q, j]
            slot = starts[d]
            starts[d] += 1
            if slot < k:
                out_d[q, slot] = d
                out_p[q, slot] = buf_p[q, j]


@jit
def radius(qwords, words, first, last, offset, r, bits):
    nq = qwords.shape[1]
    dist = np.empty(CODE_BLOCK, np.int32)
    capacity = 1024
    keys = np.empty(capacity, np.int64)  # query * (bits + 1) + distance
    positions = np.empty(capacity, np.int64)
    found = 0
    for start in range(first, last, CODE_BLOCK):
        stop = min(last, start + CODE_BLOCK)
        for q in range(nq):
            distances(qwords, q, words, start, stop, dist)
            for sub in range(0, stop - start, SURVIVOR_CHECK):
                end = min(stop - start, sub + SURVIVOR_CHECK)
                if not any_below(dist, sub, end, r + 1):
                    continue
                for i in range(sub, end):
                    if dist[i] <= r:
                        if found == capacity:
                            capacity *= 2
                            grown = np.empty(capacity, np.int64)
                            grown[:found] = keys[:found]
                            keys = grown
                            grown = np.empty(capacity, np.int64)
                            grown[:found] = positions[:found]
                            positions = grown
                        keys[found] = q * (bits + 1) + dist[i]
                        positions[found] = offset + start + i
                        found += 1
    # a stable counting sort on (query, distance): positions stay in order
    width = nq * (bits + 1)
    starts = np.zeros(width + 1, np.int64)
    for j in range(found):
        starts[keys[j] + 1] += 1
    for t in range(1, width + 1):
        starts[t] += starts[t - 1]
    counts = np.zeros(nq, np.int64)
    for q in range(nq):
        counts[q] = starts[(q + 1) * (bits + 1)] - starts[q * (bits + 1)]
    out_d = np.empty(found, np.int32)
    out_p = np.empty(found, np.int64)
    for j in range(found):
        slot = starts[keys[j]]
        starts[keys[j]] += 1
        out_d[slot] = keys[j] % (bits + 1)
        out_p[slot] = positions[j]
    return counts, out_d, out_p
