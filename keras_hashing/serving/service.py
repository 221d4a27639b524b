"""The search service: a Hamming index behind HTTP, beside the model that encodes queries.

``keras-hashing serve --index FILE (--run RUN | --serving-url URL --model NAME)`` runs
this FastAPI app with uvicorn:

* ``POST /v1/search`` with ``{"codes": [[byte, ...], ...]}``, ``{"images": [{"b64":
  "..."}]}`` or ``{"ids": [database id, ...]}``, and ``"k": 10`` or ``"radius": r``:
  ``{"results": [{"ids", "distances", "paths", "labels"}, ...]}``, one per query,
  exactly what ``HammingIndex.search`` / ``range_search`` give;
* ``GET /v1/items/{id}/thumbnail`` (only from the paths the index records, inside the
  collection's root), ``GET /v1/items?sample=n``, ``GET /v1/index``;
* ``GET /healthz`` (ready once the index is loaded and the encoder answers),
  ``GET /metrics`` (Prometheus), ``GET /openapi.json``, and ``GET /`` a page to try it.

The index file is read into memory (memory-mapped with ``--mmap``) and loaded again when
the file changes (``index build`` and ``index merge`` rename a new file into place):
requests in flight finish on the old one.
Searches and encodes run in worker threads, so the event loop never waits on them;
encodes through TF Serving are batched across concurrent requests. Client mistakes are
JSON errors with a 4xx status, never a 500.

Example:
    >>> app = create_app("photos.khi", encoder=None)           # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8080)          # doctest: +SKIP
"""

import asyncio
import contextlib
import errno
import io
import json
import os
import sys
import time
from importlib import resources

import numpy as np

from keras_hashing.errors import HashingError, IndexFileError
from keras_hashing.search import kernel
from keras_hashing.search.index import HammingIndex
from keras_hashing.serving.guard import RequestGuard, error_response
from keras_hashing.serving.search_request import (INT64_MAX, INT64_MIN, ClientError,
                                               image_size_of)
from keras_hashing.fileio import open_regular

MAX_BODY_BYTES = 8 << 20
# the most a request's declared body may take to arrive (8 MB at 1 Mbit/s is 67 s)
BODY_TIMEOUT_SECONDS = 60.0
# the most a request's headers may take to arrive
HEADER_TIMEOUT_SECONDS = 10.0
THUMBNAIL_PX = 128
TOKEN_ENV = "KERAS_HASHING_TOKEN"


# -- the index, swapped when its file is replaced ------------------------------------------
class IndexHolder:
    """The current index of a file, read into memory (1M 64-bit codes are 8 MB), or with
    ``mmap`` memory-mapped, for an index larger than RAM; ``refresh`` loads the file again
    when it changed (another inode, size or mtime). Readers take ``current`` once per
    request, so a swap never changes the index under a search. In memory, a file copied
    over in place (``cp new.khi served.khi``) is only a changed file; memory-mapped, the
    pages under a search could be cut away (SIGBUS), so replace a mapped index by renaming
    a new file over it, as ``index build`` and ``index merge`` do.

    Every index, the first and each replacement, passes the same checks: it loads, holds
    items, and passes ``check`` (the service's: codes of its encoder's model). A refused
    replacement keeps the old index, logs one line, and is counted (``refused``) and
    described (``last_refusal``) until a good one is swapped in.
    """

    def __init__(self, path, method="flat", check=None, mmap=False):
        self.path = os.fspath(path)
        self.method = method
        self.mmap = bool(mmap)
        self.check = check
        self.swaps = 0
        self.refused = 0
        self.last_refusal = None
        self._stamp = self._file_stamp()
        # the first load raises (IndexFileError, ...) on a missing or bad file
        self.current = self._load()

    def _load(self) -> HammingIndex:
        index = HammingIndex.load(self.path, mmap=self.mmap, method=self.method)
        if not len(index):
            raise IndexFileError(f"{self.path} holds no items")
        if self.check is not None:
            self.check(index)
        return index

    def _file_stamp(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def refresh(self) -> bool:
        """Load the file if it changed; True when a new index was swapped in. A file that
        does not load or fails a check keeps the old index (once per version of it)."""
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            index = self._load()
        except HashingError as e:
            self.refused += 1
            self.last_refusal = str(e)
            print(f"keras-hashing: warning: index swap refused, still serving the previous "
                  f"index: {e}", file=sys.stderr, flush=True)
            return False
        self.current, self.last_refusal = index, None
        self.swaps += 1
        return True


def listening_socket(host: str, port: int):
    """A TCP socket bound to (host, port), as uvicorn would bind it; HashingError in one
    line when the port is taken or the host is not an address of this machine."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise HashingError(f"--host {host}: not an address of this machine ({e.strerror})") \
            from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        reason = ("in use by another process" if e.errno == errno.EADDRINUSE
                  else e.strerror or str(e))
        raise HashingError(f"cannot listen on {host}:{port}: {reason}; choose another "
                           "--port or --host") from None
    return sock


def server_config(app, header_timeout=HEADER_TIMEOUT_SECONDS, **kwargs):
    """The uvicorn Config that serves ``app``: its HTTP protocol closes a connection whose
    request headers have not all arrived ``header_timeout`` seconds after it opened (or
    after its last answer), with a 408, so slow clients cannot hold the server's
    connections (uvicorn reads headers before the app sees a request, so the app's own
    body timeout cannot cover them).

    Example:
        >>> server = uvicorn.Server(server_config(app, host="127.0.0.1"))  # doctest: +SKIP
    """
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._start_header_timer()

        def _start_header_timer(self):
            self._waiting_after = self.cycle  # a new cycle means the headers came in
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def handle_events(self):
            super().handle_events()
            if self._header_timer is not None and self.cycle is not self._waiting_after:
                self._header_timer.cancel()
                self._header_timer = None

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():  # the next request's headers are timed too
                self._start_header_timer()

        def connection_lost(self, exc):
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _headers_too_slow(self):
            self._header_timer = None
            if self.cycle is self._waiting_after and not self.transport.is_closing():
                body = (b'{"error": "the request headers did not arrive within '
                        + f"{header_timeout:g}".encode() + b' s"}')
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: "
                                     b"application/json\r\nconnection: close\r\n"
                                     b"content-length: " + str(len(body)).encode()
                                     + b"\r\n\r\n" + body)
                self.transport.close()

    return uvicorn.Config(app, http=HeaderTimeoutProtocol, **{"log_level": "warning",
                                                                **kwargs})


# -- encoders -------------------------------------------------------------------------------
def wait_until_healthy(url: str, timeout: float = 60.0) -> None:
    """Block until ``url``/healthz answers 200 (a service just started in another
    process); raise HashingError after ``timeout`` seconds.

    Example:
        >>> wait_until_healthy("http://127.0.0.1:8080", timeout=30)  # doctest: +SKIP
    """
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise HashingError(f"{url} did not become healthy within {timeout:g} s")


# -- thumbnails -----------------------------------------------------------------------------
def collection_root(index):
    """The folder every path of the index must lie in (its ``--images`` source), or None
    when the index records no image files."""
    meta = index.metadata
    spec = meta.get("images")
    if index.paths is None or not spec:
        return None
    kind, _, where = str(spec).partition(":")
    if meta.get("data_dir"):
        return os.path.realpath(meta["data_dir"])
    if kind == "folder":
        return os.path.realpath(where)
    return os.path.realpath(os.path.dirname(os.path.abspath(where)) if kind in ("list", "csv")
                            and not os.path.isdir(where) else where)


def thumbnail_png(index, item_id: int, cache: dict) -> bytes:
    """A PNG thumbnail of database item ``item_id``: read from the path the index records
    (refused unless it resolves inside the collection's root, symlinks followed), or from
    the dataset split the index was built from."""
    from PIL import Image

    try:
        position = int(index.positions_of([item_id])[0])
    except HashingError:
        raise ClientError(f"no item {item_id} in the index", status=404) from None
    if index.paths is not None:
        root = collection_root(index)
        path = os.path.realpath(index.paths[position])
        if root is None or os.path.commonpath([root, path]) != root:
            raise ClientError(f"item {item_id}'s file lies outside the collection", status=404)
        try:
            with open_regular(path, "rb") as f:
                blob = f.read()
        except OSError:
            raise ClientError(f"item {item_id}'s file cannot be read", status=404) from None
        image_size_of(blob)
        try:
            img = Image.open(io.BytesIO(blob))
            img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            img = img.convert("RGB")
        except (OSError, ValueError):
            raise ClientError(f"item {item_id}'s file is not a readable image",
                              status=404) from None
    else:
        pixels = _dataset_pixels(index, position, cache)
        img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        img = img.resize((THUMBNAIL_PX, THUMBNAIL_PX), Image.NEAREST)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _dataset_pixels(index, position, cache):
    """The pixels of one item of a dataset-split index (the split is loaded once)."""
    from keras_hashing.data.datasets import images_of_index

    key = id(index)
    if key not in cache:
        try:
            images, _, _ = images_of_index(index, index.ids)
        except HashingError as e:
            raise ClientError(f"no images for this index: {e}", status=404) from None
        cache.clear()
        cache[key] = images
    return cache[key][position]


# -- the app --------------------------------------------------------------------------------
def create_app(index_path, encoder=None, token=None, max_body=MAX_BODY_BYTES,
               poll_seconds=1.0, method="flat", max_delay=0.005, check_index=None,
               mmap=False, body_timeout=BODY_TIMEOUT_SECONDS):
    """The FastAPI app serving ``index_path``; ``encoder`` (any ``encoders.Encoder``, or
    None: codes and ids only) encodes query images, those of concurrent requests in one
    call (waiting up to ``max_delay`` seconds for company); ``token`` guards every route
    but /healthz. ``check_index(index)`` raises HashingError for an index the encoder did
    not make; it runs on the first index and on every replacement of the file (an
    encoder's code length is always checked). ``mmap`` memory-maps the index instead of
    reading it into memory (``IndexHolder``); a body that has not arrived after
    ``body_timeout`` seconds is answered 408."""
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    from keras_hashing import __version__

    def check(index):
        if encoder is not None and index.bits != encoder.bits:
            raise IndexFileError(f"{index_path} holds {index.bits}-bit codes but the encoder "
                                 f"makes {encoder.bits}-bit codes")
        if check_index is not None:
            check_index(index)

    holder = IndexHolder(index_path, method=method, check=check, mmap=mmap)
    # the compiled scan loads now, not inside the first request's latency
    kernel.load()

    async def watch_index():
        while True:
            await asyncio.sleep(poll_seconds)
            await run_in_threadpool(holder.refresh)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.get_running_loop().create_task(watch_index())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(title="keras-hashing search", version=__version__, lifespan=lifespan)
    app.state.holder = holder
    metrics = ServiceMetrics()
    _add_guards(app, token, max_body, metrics, body_timeout)
    _add_routes(app, holder, encoder, metrics, max_delay)
    return app


class ServiceMetrics:
    """Prometheus metrics of one app: requests and latency by route and status, index size."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("keras_hashing_requests_total", "HTTP requests",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("keras_hashing_request_seconds", "Request latency", ["route"],
                                 registry=self.registry, buckets=(
                                     .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.items = Gauge("keras_hashing_index_items", "Items in the index",
                           registry=self.registry)
        self.swaps = Gauge("keras_hashing_index_swaps", "Index files swapped in",
                           registry=self.registry)
        self.refused = Gauge("keras_hashing_index_swaps_refused",
                             "Index file replacements refused (the previous index stays)",
                             registry=self.registry)

    def observe(self, path, status, seconds) -> None:
        route = path if path in ROUTES else (
            "/v1/items/{id}/thumbnail" if path.startswith("/v1/items/") else "other")
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def text(self, holder) -> str:
        from prometheus_client import generate_latest

        self.items.set(len(holder.current))
        self.swaps.set(holder.swaps)
        self.refused.set(holder.refused)
        return generate_latest(self.registry).decode()


def _add_guards(app, token, max_body, metrics, body_timeout=BODY_TIMEOUT_SECONDS) -> None:
    """The token, the body-size cap and timeout, and the metrics (``guard.RequestGuard``);
    JSON errors for client mistakes."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_middleware(RequestGuard, token=token, max_body=max_body, observe=metrics.observe,
                       body_timeout=body_timeout)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "invalid request")
        return error_response(f"{where + ': ' if where else ''}{message}", 400)

    @app.exception_handler(ClientError)
    async def client_error(request, exc):
        return error_response(str(exc), exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # 404 of an unknown path, 405, ...: the same shape
        response = error_response(str(exc.detail), exc.status_code)
        response.headers.update(exc.headers or {})
        return response


def _add_routes(app, holder, encoder, metrics, max_delay) -> None:
    from fastapi import Path, Query
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.concurrency import run_in_threadpool

    from keras_hashing.serving.batching import encode_batcher, search_batcher
    from keras_hashing.serving.search_request import SearchRequest, search

    searches = search_batcher()
    encodes = None if encoder is None else encode_batcher(encoder, max_delay=max_delay)
    thumbnails: dict = {}

    @app.post("/v1/search")
    async def search_route(body: SearchRequest):
        """Nearest database items of each query (codes, images or database ids)."""
        answer = await search(body, holder.current, encodes, searches)
        # plain ints and strings already: FastAPI's jsonable_encoder would walk every list
        return Response(json.dumps(answer, separators=(",", ":")),
                        media_type="application/json")

    @app.get("/v1/index")
    async def index_info():
        """The index being served: bits, items, method, metadata."""
        index = holder.current
        return {"bits": index.bits, "ntotal": len(index), "swaps": holder.swaps,
                "has_labels": index.labels is not None, "has_paths": index.paths is not None,
                "encodes_images": encoder is not None,
                "metadata": {k: v for k, v in index.metadata.items() if k != "run"}}

    @app.get("/v1/items")
    async def sample_items(sample: int = Query(12, ge=INT64_MIN, le=INT64_MAX),
                           seed: int = Query(0, ge=0, le=INT64_MAX)):
        """Ids of a few database items (the page shows them to click)."""
        index = holder.current
        if not 1 <= sample <= 100:
            raise ClientError("sample must be in 1..100")
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(len(index), size=min(sample, len(index)), replace=False))
        labels = None if index.labels is None or index.labels.ndim != 1 else \
            index.labels[take].tolist()
        return {"ids": index.ids[take].tolist(), "labels": labels}

    @app.get("/v1/items/{item_id}/thumbnail")
    async def thumbnail(item_id: int = Path(ge=INT64_MIN, le=INT64_MAX)):
        """A PNG thumbnail of a database item, by id only."""
        png = await run_in_threadpool(thumbnail_png, holder.current, item_id, thumbnails)
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=60"})

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz():
        """200 once the index is loaded and the encoder answers, else 503; a refused
        replacement of the index file shows as ``index_swap_refused`` (still 200: the
        previous index is served)."""
        index = holder.current
        ok = index is not None and (encoder is None or await run_in_threadpool(encoder.ready))
        body = {"status": "ready" if ok else "not ready",
                "items": 0 if index is None else len(index),
                "index_swap_refused": holder.last_refusal}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_route():
        """Prometheus metrics: requests and latency by route and status, index size."""
        return PlainTextResponse(metrics.text(holder), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        """A page to try the index: drop an image, or click a database item."""
        return (resources.files("keras_hashing.serving") / "web" / "index.html").read_text("utf-8")


ROUTES = ("/v1/search", "/v1/index", "/v1/items", "/healthz", "/metrics", "/", "/openapi.json")
