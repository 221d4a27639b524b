"""One asyncio micro-batcher for the search service: the work of concurrent requests
(their searches, or their images to encode) runs as one call in a worker thread.

Example:
    >>> import asyncio
    >>> doubled = MicroBatcher(lambda batch: [2 * x for x in batch], max_size=8)
    >>> async def two_requests():
    ...     return await asyncio.gather(doubled.submit(1), doubled.submit(5))
    >>> asyncio.run(two_requests())
    [2, 10]
"""

from __future__ import annotations

import asyncio

import numpy as np


class MicroBatcher:
    """Runs ``run_batch(requests) -> results`` (one result per request, in order) over
    the requests that arrive together.

    One batch runs at a time; the requests that arrive meanwhile, up to ``max_size``
    (counted by ``size(request)``), plus any within ``max_delay`` seconds (0: none is
    waited for, so a lone request pays nothing), share the next call. A failing call
    fails each of its requests with the same exception; a ``run_batch`` that returns an
    exception in a request's place fails that request alone.
    """

    def __init__(self, run_batch, max_size, max_delay=0.0, size=lambda request: 1):
        self.run_batch, self.size = run_batch, size
        self.max_size, self.max_delay = int(max_size), float(max_delay)
        self._queue = None

    async def submit(self, request):
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run())
        future = loop.create_future()
        self._queue.put_nowait((request, future))
        return await future

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_delay
            while sum(self.size(request) for request, _ in batch) < self.max_size:
                if not self._queue.empty():  # arrived during the last call
                    batch.append(self._queue.get_nowait())
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            try:
                results = await asyncio.to_thread(self.run_batch, [r for r, _ in batch])
            except Exception as e:  # noqa: BLE001 - every waiting request gets the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, Exception):  # this request's own failure
                    future.set_exception(result)
                else:
                    future.set_result(result)


def search_batches(requests) -> list:
    """k-NN searches of requests ``(index, codes, k)`` as one ``index.search`` per index
    (with the largest k); each gets its own first k, exactly its top k since ties are
    broken by position. A request that came in before an index swap keeps its index.

    The exhaustive scan costs far less per query in a batch (1,000 queries over 1M codes
    take about 1 ms each, one alone 2 to 3 ms).
    """
    results = [None] * len(requests)
    for index in {id(r[0]): r[0] for r in requests}.values():
        members = [i for i, r in enumerate(requests) if r[0] is index]
        codes = np.concatenate([requests[i][1] for i in members])
        dist, ids = index.search(codes, max(requests[i][2] for i in members))
        start = 0
        for i in members:
            n, k = len(requests[i][1]), requests[i][2]
            results[i] = (dist[start:start + n, :k], ids[start:start + n, :k])
            start += n
    return results


def _alone(encoder, blobs):
    """One request's codes, or the exception that answers it."""
    try:
        return encoder.encode_bytes(blobs)
    except Exception as e:  # noqa: BLE001 - handed to that request's future
        return e


def search_batcher(max_queries=256, max_delay=0.0) -> MicroBatcher:
    """Searches of concurrent requests, ``submit((index, codes, k)) -> (dist, ids)``."""
    return MicroBatcher(search_batches, max_queries, max_delay, size=lambda r: len(r[1]))


def encode_batcher(encoder, max_images=32, max_delay=0.005) -> MicroBatcher:
    """Images of concurrent requests encoded in one ``encoder.encode_bytes`` call (one
    predict request to TF Serving, one forward pass in process):
    ``submit(list of image bytes) -> packed codes``. When the shared call fails (an image
    the decoder refuses), each request is encoded again on its own, so the failure
    answers the request that sent the image and no other.

    Example:
        >>> class Lengths:
        ...     def encode_bytes(self, blobs):
        ...         if b"bad" in blobs:
        ...             raise ValueError("cannot decode")
        ...         return np.array([[len(b)] for b in blobs], np.uint8)
        >>> async def three():
        ...     batcher = encode_batcher(Lengths(), max_delay=0.01)
        ...     return await asyncio.gather(batcher.submit([b"ab"]), batcher.submit([b"bad"]),
        ...                                 batcher.submit([b"abc"]), return_exceptions=True)
        >>> [r.tolist() if isinstance(r, np.ndarray) else type(r).__name__
        ...  for r in asyncio.run(three())]
        [[[2]], 'ValueError', [[3]]]
    """

    def run(requests):
        try:
            codes = encoder.encode_bytes([blob for blobs in requests for blob in blobs])
        except Exception:  # noqa: BLE001 - retried one request at a time just below
            if len(requests) == 1:
                raise
            return [_alone(encoder, blobs) for blobs in requests]
        bounds = np.cumsum([0] + [len(blobs) for blobs in requests])
        return [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    return MicroBatcher(run, max_images, max_delay, size=len)
