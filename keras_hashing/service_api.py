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


async def search(body: SearchRequest, index, encoder) -> dict:
    """``{"results": [...]}``: what HammingIndex.search (or range_search) gives, with each
    neighbour's path and label where the index has them."""
    codes = await query_codes(body, index, encoder)
    if body.radius is not None:
        lims, dist, ids = await asyncio.to_thread(index.range_search, codes, int(body.radius))
        rows = [(ids[lims[i]:lims[i + 1]], dist[lims[i]:lims[i + 1]])
                for i in range(len(codes))]
    else:
        dist, ids = await asyncio.to_thread(index.search, codes, int(body.k or 10))
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
