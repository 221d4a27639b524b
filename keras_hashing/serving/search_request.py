"""The search service's request schema and its one operation (see ``service``).

Kept apart from the app so the schema (pydantic, shown in /openapi.json) and the search
logic read on their own.
"""

import asyncio
import base64
import binascii
import io
import warnings
from typing import Annotated, List, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from keras_hashing import codes as codes_lib
from keras_hashing.data.images import SUPPORTED_FORMATS
from keras_hashing.errors import BadRequestError, DataError, ServingError

MAX_QUERIES = 64
MAX_K = 1000
# Every number a client sends is bounded here, so none can overflow numpy (an answer 500)
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
Byte = Annotated[int, Field(ge=0, le=255)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e30, le=1e30)]
MAX_RERANK = 10_000
# Every answer is bounded: a radius query returns at most this many items per query (its
# nearest; ``limit`` lowers it, and ``truncated`` says when the ball held more)
MAX_RADIUS_RESULTS = 1000
# results an answer builds on the event loop itself (a few hundred microseconds at most)
INLINE_RESULTS = 1000
MAX_IMAGE_PIXELS = 50_000_000  # per query image, checked from its header before decoding


class ClientError(Exception):
    """A request the client must fix: answered with ``status`` and a JSON error."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def image_size_of(blob: bytes):
    """(width, height) from an image's header, without decoding it; ClientError when the
    bytes are not an image or declare more than MAX_IMAGE_PIXELS."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as img:
                width, height = img.size
                image_format = img.format
    except Image.DecompressionBombError:
        raise ClientError(f"an image declares more than {MAX_IMAGE_PIXELS:,} pixels",
                          status=413) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ClientError(f"an image could not be decoded (formats read: "
                          f"{', '.join(SUPPORTED_FORMATS)})") from None
    if image_format not in SUPPORTED_FORMATS:  # Pillow reads it, the decoder would not
        raise ClientError(f"an image is {image_format}; the formats read are "
                          f"{', '.join(SUPPORTED_FORMATS)}")
    if width * height > MAX_IMAGE_PIXELS:
        raise ClientError(f"an image declares {width} x {height} pixels; the limit is "
                          f"{MAX_IMAGE_PIXELS:,}", status=413)
    return width, height


def decode_b64(value: str) -> bytes:
    """Base64 (standard or URL-safe) to bytes; ClientError when it is not base64."""
    try:
        return base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ClientError("images[].b64 is not base64") from None


def check_codes(rows, bits: int) -> np.ndarray:
    """JSON rows of packed bytes -> uint8 (Q, ceil(bits/8)); ClientError otherwise."""
    nbytes = codes_lib.code_bytes(bits)
    if any(len(row) != nbytes for row in rows):
        raise ClientError(f"each code must be {nbytes} bytes ({bits}-bit codes, packed)")
    arr = np.asarray(rows, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ClientError("code bytes must be integers 0..255")
    return arr.astype(np.uint8).reshape(len(rows), nbytes)


class EncodedImage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    b64: str = Field(description="the image file's bytes (PNG, JPEG, GIF, BMP, WebP), base64")


class SearchRequest(BaseModel):
    """Exactly one of ``codes``, ``images``, ``ids``; ``k`` (default 10) or ``radius``."""

    model_config = ConfigDict(extra="forbid")
    codes: Optional[List[List[Byte]]] = Field(
        None, description="packed codes, ceil(bits / 8) bytes each (as np.packbits)")
    images: Optional[List[EncodedImage]] = Field(None, description="query image files")
    ids: Optional[List[Int64]] = Field(None, description="database items used as queries")
    signed: Optional[List[List[Finite]]] = Field(
        None, description="real-valued codes whose signs are the bits (the export's "
                          "'signed' output), bits numbers each; needed by rerank")
    k: Optional[Int64] = Field(None, description=f"neighbours per query, 1..{MAX_K}")
    radius: Optional[Int64] = Field(
        None, description=f"all items within this Hamming radius, 0..{codes_lib.MAX_BITS}")
    rerank: Optional[Int64] = Field(
        None, description=f"re-rank the Hamming top R (k..{MAX_RERANK}) by the asymmetric "
                          "score of the signed queries")
    limit: Optional[Int64] = Field(
        None, description=f"with radius: the most items per query, nearest first "
                          f"(1..{MAX_RADIUS_RESULTS}, default {MAX_RADIUS_RESULTS}); a "
                          "result cut short says truncated: true")

    @model_validator(mode="after")
    def one_query_kind(self):
        given = [name for name in ("codes", "images", "ids", "signed")
                 if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of codes, images, ids or signed")
        queries = getattr(self, given[0])
        if not 1 <= len(queries) <= MAX_QUERIES:
            raise ValueError(f"give 1..{MAX_QUERIES} queries, got {len(queries)}")
        if self.k is not None and self.radius is not None:
            raise ValueError("give k or radius, not both")
        if self.k is not None and not 1 <= self.k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {self.k}")
        if self.radius is not None and not 0 <= self.radius <= codes_lib.MAX_BITS:
            raise ValueError(f"radius must be in 0..{codes_lib.MAX_BITS}, got {self.radius}")
        if self.limit is not None and (self.radius is None or
                                       not 1 <= self.limit <= MAX_RADIUS_RESULTS):
            raise ValueError(f"limit caps a radius query's items: give radius, and limit in "
                             f"1..{MAX_RADIUS_RESULTS}")
        if self.rerank is not None:
            if self.signed is None or self.radius is not None:
                raise ValueError("rerank re-orders a top k by signed queries: give signed "
                                 "(and k), not codes, images, ids or radius")
            if not (self.k or 10) <= self.rerank <= MAX_RERANK:
                raise ValueError(f"rerank must be in k..{MAX_RERANK}, got {self.rerank}")
        return self


async def query_codes(body: SearchRequest, index, encodes) -> np.ndarray:
    """The packed codes of the request's queries; ``encodes`` (a ``batching``
    MicroBatcher over an Encoder, or None) encodes query images."""
    if body.codes is not None:
        return check_codes(body.codes, index.bits)
    if body.signed is not None:
        if any(len(row) != index.bits for row in body.signed):
            raise ClientError(f"each signed code must have {index.bits} numbers")
        return codes_lib.pack_bits(np.asarray(body.signed, np.float32) >= 0)
    if body.ids is not None:
        try:
            return np.asarray(index.codes[index.positions_of(body.ids)])
        except Exception:  # noqa: BLE001 - HashingError for unknown ids
            raise ClientError("some ids are not in the index", status=404) from None
    if encodes is None:
        raise ClientError("this service encodes no images (start it with --run or "
                          "--serving-url); send codes or ids", status=400)
    blobs = [decode_b64(image.b64) for image in body.images]
    for blob in blobs:
        image_size_of(blob)  # undecodable or too large: refused before any decoding
    try:
        codes = await encodes.submit(blobs)
    except (DataError, BadRequestError) as e:  # an image the decoder refused after all
        raise ClientError(str(e)) from None
    except ServingError as e:  # TF Serving down, timed out or answering nonsense
        raise ClientError(f"the encoder failed: {e}", status=502) from None
    codes = np.asarray(codes, np.uint8)
    if codes.ndim != 2 or codes.shape[1] * 8 < index.bits:
        raise ClientError("the encoder's codes do not fit this index", status=500)
    return codes


async def search(body: SearchRequest, index, encodes=None, searches=None) -> dict:
    """``{"results": [...]}``: what HammingIndex.search (or range_search) gives, with each
    neighbour's path and label where the index has them. ``searches`` (a
    ``batching.search_batcher``) shares one scan among concurrent requests."""
    codes = await query_codes(body, index, encodes)
    if body.radius is not None:
        lims, dist, ids = await asyncio.to_thread(index.range_search, codes, int(body.radius))
        limit = int(body.limit or MAX_RADIUS_RESULTS)
        rows = [(ids[lims[i]:min(lims[i + 1], lims[i] + limit)],
                 dist[lims[i]:min(lims[i + 1], lims[i] + limit)],
                 bool(lims[i + 1] - lims[i] > limit)) for i in range(len(codes))]
    else:
        k = int(body.k or 10)
        if body.rerank is not None:
            dist, ids = await asyncio.to_thread(
                index.search, codes, k, rerank=np.asarray(body.signed, np.float32),
                depth=int(body.rerank))
        elif searches is None:
            dist, ids = await asyncio.to_thread(index.search, codes, k)
        else:
            dist, ids = await searches.submit((index, codes, k))
        rows = [(row_ids, row_dist, None) for row_ids, row_dist in zip(ids, dist)]
    # a large answer's lists are built off the event loop, so other requests go on
    # meanwhile; a small one is built here (a thread hop costs 0.15 ms, more than it)
    if sum(len(row[0]) for row in rows) <= INLINE_RESULTS:
        return {"results": _results(index, rows)}
    return {"results": await asyncio.to_thread(_results, index, rows)}


def _results(index, rows) -> list:
    """Each query's ids, distances, paths and labels (and, for a radius query, whether
    its ball held more than the limit)."""
    results = []
    for row_ids, row_dist, truncated in rows:
        positions = index.positions_of(row_ids) if len(row_ids) else np.zeros(0, np.int64)
        result = {"ids": [int(i) for i in row_ids], "distances": [int(d) for d in row_dist]}
        result["paths"] = None if index.paths is None else [index.paths[p] for p in positions]
        labels = index.labels  # by the positions found once for paths and labels both
        result["labels"] = None if labels is None else np.asarray(labels[positions]).tolist()
        if truncated is not None:
            result["truncated"] = truncated
        results.append(result)
    return results
