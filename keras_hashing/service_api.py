"""The search service's request schema and its one operation (see ``service``).

Kept apart from the app so the schema (pydantic, shown in /openapi.json) and the search
logic read on their own.
"""

import asyncio
from typing import List, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from keras_hashing.service import (MAX_K, MAX_QUERIES, ClientError, check_codes, decode_b64,
                                   image_size_of)


class EncodedImage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    b64: str = Field(description="the image file's bytes (PNG, JPEG, GIF, BMP), base64")


class SearchRequest(BaseModel):
    """Exactly one of ``codes``, ``images``, ``ids``; ``k`` (default 10) or ``radius``."""

    model_config = ConfigDict(extra="forbid")
    codes: Optional[List[List[int]]] = Field(
        None, description="packed codes, ceil(bits / 8) bytes each (as np.packbits)")
    images: Optional[List[EncodedImage]] = Field(None, description="query image files")
    ids: Optional[List[int]] = Field(None, description="database items used as queries")
    k: Optional[int] = Field(None, description=f"neighbours per query, 1..{MAX_K}")
    radius: Optional[int] = Field(None, description="all items within this Hamming radius")

    @model_validator(mode="after")
    def one_query_kind(self):
        given = [name for name in ("codes", "images", "ids") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of codes, images or ids")
        queries = getattr(self, given[0])
        if not 1 <= len(queries) <= MAX_QUERIES:
            raise ValueError(f"give 1..{MAX_QUERIES} queries, got {len(queries)}")
        if self.k is not None and self.radius is not None:
            raise ValueError("give k or radius, not both")
        if self.k is not None and not 1 <= self.k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {self.k}")
        if self.radius is not None and self.radius < 0:
            raise ValueError(f"radius must be >= 0, got {self.radius}")
        return self


async def query_codes(body: SearchRequest, index, encoder) -> np.ndarray:
    """The packed codes of the request's queries."""
    if body.codes is not None:
        return check_codes(body.codes, index.bits)
    if body.ids is not None:
        try:
            return np.asarray(index.codes[index.positions_of(body.ids)])
        except Exception:  # noqa: BLE001 - HashingError for unknown ids
            raise ClientError("some ids are not in the index", status=404) from None
    if encoder is None:
        raise ClientError("this service encodes no images (start it with --run or "
                          "--serving-url); send codes or ids", status=400)
    blobs = [decode_b64(image.b64) for image in body.images]
    for blob in blobs:
        image_size_of(blob)  # undecodable or too large: refused before any decoding
    if hasattr(encoder, "encode_bytes_async"):
        codes = await encoder.encode_bytes_async(blobs)
    else:
        codes = await asyncio.to_thread(encoder.encode_bytes, blobs)
    codes = np.asarray(codes, np.uint8)
    if codes.ndim != 2 or codes.shape[1] * 8 < index.bits:
        raise ClientError("the encoder's codes do not fit this index", status=500)
    return codes


class SearchBatcher:
    """Runs the k-NN searches of concurrent requests as one ``index.search`` call.

    The exhaustive scan costs far less per query in a batch (1,000 queries over 1M codes
    take about 1 ms each, one alone 2 to 3 ms). Searches run one batch at a time in a
    worker thread; the requests that arrive meanwhile (up to ``max_queries`` codes, plus
    any within ``max_delay`` seconds; 0: none is waited for, so a lone request pays
    nothing) share the next scan, with the largest k among them. Each gets its own k
    first results, which are exactly its top k since ties are broken by position.
    """

    def __init__(self, max_queries=256, max_delay=0.0):
        self.max_queries, self.max_delay = int(max_queries), float(max_delay)
        self._queue = None

    async def top_k(self, index, codes, k):
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            loop.create_task(self._run())
        future = loop.create_future()
        self._queue.put_nowait((index, codes, int(k), future))
        return await future

    async def _run(self):
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self.max_delay
            while sum(len(b[1]) for b in batch) < self.max_queries:
                if not self._queue.empty():  # arrived during the last scan
                    batch.append(self._queue.get_nowait())
                    continue
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            # one scan per index: a request that came in before a swap keeps its index
            for index in {id(b[0]): b[0] for b in batch}.values():
                group = [b for b in batch if b[0] is index]
                await self._search(index, group)

    @staticmethod
    async def _search(index, group):
        codes = np.concatenate([g[1] for g in group])
        k = max(g[2] for g in group)
        try:
            dist, ids = await asyncio.to_thread(index.search, codes, k)
        except Exception as e:  # noqa: BLE001 - each waiting request gets the failure
            for *_, future in group:
                if not future.done():
                    future.set_exception(e)
            return
        start = 0
        for _, c, own_k, future in group:
            if not future.done():
                future.set_result((dist[start:start + len(c), :own_k],
                                   ids[start:start + len(c), :own_k]))
            start += len(c)


async def search(body: SearchRequest, index, encoder, batcher=None) -> dict:
    """``{"results": [...]}``: what HammingIndex.search (or range_search) gives, with each
    neighbour's path and label where the index has them."""
    codes = await query_codes(body, index, encoder)
    if body.radius is not None:
        lims, dist, ids = await asyncio.to_thread(index.range_search, codes, int(body.radius))
        rows = [(ids[lims[i]:lims[i + 1]], dist[lims[i]:lims[i + 1]])
                for i in range(len(codes))]
    else:
        k = int(body.k or 10)
        if batcher is None:
            dist, ids = await asyncio.to_thread(index.search, codes, k)
        else:
            dist, ids = await batcher.top_k(index, codes, k)
        rows = list(zip(ids, dist))
    results = []
    for row_ids, row_dist in rows:
        positions = index.positions_of(row_ids) if len(row_ids) else np.zeros(0, np.int64)
        result = {"ids": [int(i) for i in row_ids], "distances": [int(d) for d in row_dist]}
        result["paths"] = None if index.paths is None else [index.paths[p] for p in positions]
        labels = index.labels
        result["labels"] = None if labels is None else np.asarray(labels[positions]).tolist()
        results.append(result)
    return {"results": results}
