"""The search service's gate for every request, as plain ASGI middleware: the bearer token,
a declared and bounded body that arrives in time, and the latency metrics.

It is plain ASGI rather than Starlette's ``@app.middleware("http")`` because that one
runs each request through task groups and memory streams: about 1 ms a request here,
more than the compiled scan of a million codes (docs/BENCHMARKS.md, "The search
service").

Example:
    >>> app.add_middleware(RequestGuard, token="s3cret", max_body=8 << 20,
    ...                    observe=metrics.observe, body_timeout=60.0)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import time

from keras_hashing.serving.search_request import ClientError


def error_response(message, status):
    """The service's error shape: ``{"error": message}`` with a 4xx status."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


class RequestGuard:
    """ASGI middleware: refuses a request without the token (but ``/healthz``), a POST
    without a Content-Length (a chunked body could be any size), a body over
    ``max_body`` bytes, and a body that has not arrived after ``body_timeout`` seconds
    (so a client that stops sending holds no worker); reports every request's path,
    status and seconds to ``observe``.

    Args:
        app: the ASGI app it guards.
        token: the bearer token, or None for none.
        max_body: the largest body accepted, in bytes.
        observe: ``(path, status, seconds) -> None``.
        body_timeout: seconds a declared body may take to arrive.
    """

    def __init__(self, app, token, max_body, observe, body_timeout):
        self.app = app
        self.token, self.max_body = token, max_body
        self.observe, self.body_timeout = observe, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request

        start = time.perf_counter()
        status = [500]  # what the app answered, for the metrics

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        request = Request(scope)  # headers, method, path and query; the body is not read
        refusal = self._refusal(request)
        try:
            if refusal is None:
                length = request.headers.get("content-length")
                if length and int(length):
                    receive = await self._body_in_time(receive)
                await self.app(scope, receive, send_noting_status)
        except asyncio.TimeoutError:
            refusal = (f"the request body did not arrive within {self.body_timeout:g} s", 408)
        except ClientError as e:  # raised outside a route's handlers
            refusal = (str(e), e.status)
        if refusal is not None:
            await error_response(*refusal)(scope, receive, send_noting_status)
        self.observe(scope["path"], status[0], time.perf_counter() - start)

    def _refusal(self, request):
        """(message, status) of a request refused on its headers alone, else None."""
        length = request.headers.get("content-length")
        if (self.token and request.url.path != "/healthz"
                and not authorized(request, self.token)):
            return "missing or wrong bearer token", 401
        if request.method == "POST" and length is None:
            return "a request body needs a Content-Length", 411
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return f"request body over {self.max_body} bytes", 413
        return None

    async def _body_in_time(self, receive):
        """Read the whole body within ``body_timeout``; a receive that replays it, then
        passes on what the server sends later (a disconnect)."""
        messages = []

        async def read():
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request" or not message.get("more_body"):
                    return

        await asyncio.wait_for(read(), self.body_timeout)

        async def replay():
            return messages.pop(0) if messages else await receive()

        return replay


def authorized(request, token) -> bool:
    """Whether ``request`` carries ``token``: as a bearer header, or as ``?token=`` on the
    routes a browser opens without a header (``takes_query_token``)."""
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not given and request.method in ("GET", "HEAD") and takes_query_token(request.url.path):
        given = request.query_params.get("token", "")
    return hmac.compare_digest(given.encode(), str(token).encode())


def takes_query_token(path) -> bool:
    """The routes a browser opens without a header: the page (typed into the address bar)
    and the thumbnails (``<img src>``). Elsewhere a token in the URL is not accepted: URLs
    end up in logs and histories."""
    return path == "/" or (path.startswith("/v1/items/") and path.endswith("/thumbnail"))
