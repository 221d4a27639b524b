"""TF Serving REST client and a retrieval client (encoder + HammingIndex).

Standard library + numpy only: a search service imports no TensorFlow.

TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest):

* ``GET  /v1/models/NAME[/versions/V]``           model status
* ``GET  /v1/models/NAME[/versions/V]/metadata``  signatures
* ``POST /v1/models/NAME[/versions/V]:predict``   ``{"signature_name": ..., "instances": [...]}``
  (row format) or ``{"inputs": ...}`` (columnar); binary strings as ``{"b64": "..."}``;
  errors come back as ``{"error": "..."}`` with an HTTP status.

Example:
    >>> client = TFServingClient("http://localhost:8501", "fmnist")      # doctest: +SKIP
    >>> codes = client.encode(images)            # packed uint8 (N, ceil(K/8))  # doctest: +SKIP
    >>> retrieval = RetrievalClient(client, HammingIndex.load("fm.khi"))  # doctest: +SKIP
    >>> result = retrieval.query(images, k=10)    # ids, distances, labels  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import math
import socket
import threading
import time
import urllib.parse

import numpy as np

from keras_hashing.codes import as_packed
from keras_hashing.errors import (BadRequestError, CodeLengthError, HashingError,
                                  MalformedResponseError, ModelNotFoundError, ServingError,
                                  ServingTimeoutError, ServingUnavailableError)
from keras_hashing.pixels import check_pixels

SERVING_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "encode_bytes"
# answers the sha256 of the run's model.keras that the export was made from
MODEL_INFO_SIGNATURE = "model_info"


def check_number(name, value, low, high, low_open=True) -> float:
    """``value`` as a finite float in (low, high] (or [low, high]), else a HashingError
    naming ``name`` (the client's settings, and the CLI's ``--timeout`` / ``--wait``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and (number > low if low_open else number >= low)
            and number <= high):
        raise HashingError(f"{name} must be a number in {'(' if low_open else '['}{low}, "
                           f"{high}], got {value!r}")
    return number


class TFServingClient:
    """Client of one model on a TF Serving REST endpoint.

    Args:
        url: base URL, e.g. ``http://localhost:8501``.
        model_name: the served model's name.
        version: a fixed version, or None for the latest.
        timeout: seconds for each HTTP exchange, whole (connect, headers and body).
        retries: extra attempts on 5xx / connection refused / truncated answers.
        backoff: first retry delay in seconds; doubles on each retry.
    """

    def __init__(self, url, model_name, version=None, timeout=10.0, retries=3, backoff=0.2,
                 label=None):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise HashingError(f"serving URL {url!r} must look like http://HOST:8501")
        self.url = url.rstrip("/")
        if version is not None and label is not None:
            raise HashingError("give a model version or a version label, not both")
        self.model_name = model_name
        self.version = version
        self.label = label
        self.timeout = check_number("timeout", timeout, 0, 86400)
        self.retries = int(check_number("retries", retries, 0, 100, low_open=False))
        self.backoff = check_number("backoff", backoff, 0, 60, low_open=False)
        self._bits = None
        self._digest = False  # not asked yet (None: the served model records none)

    # -- REST verbs -----------------------------------------------------------------------
    @property
    def model_path(self) -> str:
        path = f"/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        if self.label is not None:
            return path + f"/labels/{urllib.parse.quote(str(self.label), safe='')}"
        return path + (f"/versions/{int(self.version)}" if self.version is not None else "")

    def status(self) -> dict:
        """The model's version status (``model_version_status``)."""
        return self._request("GET", self.model_path)

    def available_versions(self) -> list:
        """Versions whose state is AVAILABLE (TF Serving answers LOADING while it loads)."""
        try:
            states = self.status()["model_version_status"]
            return sorted(int(s["version"]) for s in states if s.get("state") == "AVAILABLE")
        except (KeyError, TypeError, ValueError):
            raise MalformedResponseError(f"{self.url}{self.model_path}: status answer has no "
                                         "model_version_status list") from None

    def ready(self) -> bool:
        """True while a version is AVAILABLE (``encoders.Encoder``)."""
        try:
            return bool(self.available_versions())
        except HashingError:
            return False

    def wait_until_available(self, timeout=60.0, poll=0.5) -> list:
        """Poll the status endpoint until a version is AVAILABLE; returns the versions.

        A server started together with this client (docker compose, Kubernetes) refuses
        connections at first, then answers 404 "Servable not found" to predict and
        metadata while the model loads, when its status says LOADING: both are waited
        out, up to ``timeout`` seconds, then ServingUnavailableError says what was seen
        last. A status of 404 means the server does not know the model name: that is
        raised at once (ModelNotFoundError).
        """
        deadline = time.monotonic() + check_number("wait", timeout, 0, 86400, low_open=False)
        last = "no answer"
        while True:
            try:
                versions = self.available_versions()
                if versions:
                    return versions
                last = "no version AVAILABLE yet"
            except (ServingUnavailableError, ServingTimeoutError) as e:
                last = str(e)
            if time.monotonic() + poll > deadline:
                raise ServingUnavailableError(f"{self.model_name} at {self.url} is not "
                                              f"available after {timeout:g} s ({last})")
            time.sleep(poll)

    def metadata(self) -> dict:
        """The model's signatures as TF Serving describes them."""
        return self._request("GET", self.model_path + "/metadata")

    def predict(self, instances=None, inputs=None, signature_name=SERVING_SIGNATURE) -> dict:
        """Raw predict call: give exactly one of ``instances`` (rows) or ``inputs`` (columns)."""
        if (instances is None) == (inputs is None):
            raise HashingError("predict needs exactly one of instances= or inputs=")
        body = {"signature_name": signature_name}
        body["instances" if instances is not None else "inputs"] = (
            instances if instances is not None else inputs)
        return self._request("POST", self.model_path + ":predict", body)

    def model_digest(self):
        """The sha256 of the model.keras the served model was exported from (what an
        index built from that run records), or None: an export made before the
        ``model_info`` signature, or of a model that came from no run."""
        if self._digest is False:
            try:
                out = self.predict(instances=[0], signature_name=MODEL_INFO_SIGNATURE)
            except BadRequestError:  # no such signature: an older export
                self._digest = None
                return None
            rows = out.get("predictions") if isinstance(out, dict) else None
            row = rows[0] if isinstance(rows, list) and rows else None
            value = row.get("model_sha256", row) if isinstance(row, dict) else row
            if isinstance(value, dict) and set(value) == {"b64"}:  # a DT_STRING as bytes
                try:
                    value = base64.b64decode(value["b64"], validate=True).decode("ascii")
                except (ValueError, TypeError):
                    value = None
            if not isinstance(value, str):
                raise MalformedResponseError(f"{self.model_name}'s {MODEL_INFO_SIGNATURE} "
                                             f"answered {str(out)[:120]}, not a digest")
            self._digest = value or None
        return self._digest

    # -- encoding ---------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        """Code length, read once from the model's metadata."""
        if self._bits is None:
            meta = self.metadata()
            try:
                sig = meta["metadata"]["signature_def"]["signature_def"][SERVING_SIGNATURE]
                dims = sig["outputs"]["bits"]["tensor_shape"]["dim"]
                self._bits = int(dims[-1]["size"])
            except (KeyError, IndexError, TypeError, ValueError):
                raise MalformedResponseError(
                    f"metadata of {self.model_name} has no '{SERVING_SIGNATURE}' signature "
                    "with a 'bits' output; was it exported by keras-hashing?") from None
        return self._bits

    def encode(self, images, batch_size=64, columnar=False) -> np.ndarray:
        """Packed codes of raw-pixel images (N, H, W, C) via ``serving_default``."""
        images = check_pixels(images)  # the same refusals as in process, before sending
        parts = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size].tolist()
            if columnar:
                out = self.predict(inputs={"images": chunk})
            else:
                out = self.predict(instances=chunk)
            parts.append(self._codes_from(out, len(chunk)))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.uint8)

    def encode_bytes(self, blobs, batch_size=32) -> np.ndarray:
        """Packed codes of encoded image files (PNG/JPEG bytes) via ``encode_bytes``."""
        blobs = list(blobs)
        parts = []
        for start in range(0, len(blobs), batch_size):
            chunk = [{"b64": base64.b64encode(b).decode("ascii")}
                     for b in blobs[start:start + batch_size]]
            out = self.predict(instances=chunk, signature_name=BYTES_SIGNATURE)
            parts.append(self._codes_from(out, len(chunk)))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.uint8)

    def encode_bytes_signed(self, blobs, batch_size=32):
        """(packed codes, signed codes float32 (N, bits)) of encoded image files: the
        export's ``codes`` and ``signed`` outputs, for asymmetric re-ranking."""
        blobs = list(blobs)
        codes, signed = [], []
        for start in range(0, len(blobs), batch_size):
            chunk = [{"b64": base64.b64encode(b).decode("ascii")}
                     for b in blobs[start:start + batch_size]]
            out = self.predict(instances=chunk, signature_name=BYTES_SIGNATURE)
            codes.append(self._codes_from(out, len(chunk)))
            signed.append(self._signed_from(out, len(chunk)))
        if not codes:
            return np.zeros((0, 0), np.uint8), np.zeros((0, 0), np.float32)
        return np.concatenate(codes), np.concatenate(signed)

    def _signed_from(self, response, n) -> np.ndarray:
        try:
            rows = ([p["signed"] for p in response["predictions"]] if "predictions" in response
                    else response["outputs"]["signed"])
            signed = np.asarray(rows, np.float32)
        except (KeyError, TypeError, ValueError):
            raise MalformedResponseError(
                "predict answer has no 'signed' output (exported before keras-hashing "
                "returned it? export the run again)") from None
        if signed.shape != (n, self.bits) or not np.all(np.isfinite(signed)):
            raise MalformedResponseError(f"'signed' must be {n} rows of {self.bits} finite "
                                         f"numbers, got shape {signed.shape}")
        return signed

    def _codes_from(self, response, n) -> np.ndarray:
        try:
            if "predictions" in response:
                rows = [p["codes"] for p in response["predictions"]]
            else:
                rows = response["outputs"]["codes"]
            codes = np.asarray(rows)
        except (KeyError, TypeError, ValueError):
            raise MalformedResponseError(
                f"predict answer has no 'codes' output: {str(response)[:200]}") from None
        if codes.ndim != 2 or codes.shape[0] != n or not np.issubdtype(codes.dtype, np.integer) \
                or codes.min(initial=0) < 0 or codes.max(initial=0) > 255:
            raise MalformedResponseError(f"'codes' must be {n} rows of bytes 0..255, got "
                                         f"shape {codes.shape} of {codes.dtype}")
        return codes.astype(np.uint8)

    # -- transport ----------------------------------------------------------------------------
    def _request(self, method, path, body=None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        delay = self.backoff
        for attempt in range(self.retries + 1):
            retryable = None
            try:
                return self._once(method, path, data)
            except ServingUnavailableError as e:
                retryable = e
            except _Truncated as e:
                retryable = MalformedResponseError(f"{method} {path}: truncated answer ({e})")
            if attempt == self.retries:
                raise retryable
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _once(self, method, path, data) -> dict:
        """One HTTP exchange, bounded as a whole by ``timeout``: a watchdog shuts the
        socket at the deadline, so neither slow headers nor a trickled body can hold
        the client (a socket timeout alone restarts with every byte)."""
        where = f"{method} {self.url}{path}"
        parsed = urllib.parse.urlparse(self.url)
        connection = (http.client.HTTPSConnection if parsed.scheme == "https"
                      else http.client.HTTPConnection)
        try:
            conn = connection(parsed.hostname, parsed.port, timeout=self.timeout)
        except ValueError as e:  # a bad port
            raise HashingError(f"serving URL {self.url!r}: {e}") from None
        expired = threading.Event()

        def expire():
            expired.set()
            with contextlib.suppress(OSError, AttributeError):
                conn.sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(self.timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request(method, parsed.path.rstrip("/") + path, body=data,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            status, reason = resp.status, resp.reason
        except http.client.IncompleteRead as e:
            if expired.is_set():
                raise self._timeout(where) from None
            raise _Truncated(f"{len(e.partial)} bytes, then the connection closed") from None
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set() or isinstance(e, (socket.timeout, TimeoutError)):
                raise self._timeout(where) from None
            if isinstance(e, http.client.HTTPException) and \
                    not isinstance(e, http.client.RemoteDisconnected):
                raise MalformedResponseError(f"{where}: not an HTTP answer ({e})") from None
            reason = getattr(e, "strerror", None) or e
            raise ServingUnavailableError(f"{where}: cannot connect ({reason}); is TF "
                                          "Serving running there?") from None
        finally:
            watchdog.cancel()
            conn.close()
        if expired.is_set():
            raise self._timeout(where)
        if status >= 400:
            raise self._http_error(status, reason, raw, where)
        return _parse_json(raw, where)

    def _timeout(self, where) -> ServingTimeoutError:
        return ServingTimeoutError(f"{where}: no complete answer within {self.timeout:g} s")

    @staticmethod
    def _http_error(status, reason, body, where) -> ServingError:
        try:
            message = json.loads(body).get("error", "")
        except (ValueError, AttributeError, RecursionError):
            message = body[:200].decode("utf-8", "replace")
        message = f"{where}: HTTP {status}: {message or reason}"
        # 5xx: loading or overloaded; 429: too many requests. Both pass: retry.
        if status >= 500 or status == 429:
            return ServingUnavailableError(message, status=status)
        cls = {400: BadRequestError, 404: ModelNotFoundError}.get(status, ServingError)
        return cls(message, status=status)


def connect(url, model, version=None, timeout=10.0, wait=60.0) -> TFServingClient:
    """A client of the served ``model`` at ``url``, returned once a version is AVAILABLE
    (waiting up to ``wait`` seconds; None: not yet): how every command reaches TF Serving.

    Example:
        >>> client = connect("http://localhost:8501", "fm48")      # doctest: +SKIP
        >>> client.encode_bytes([open("shoe.png", "rb").read()])    # doctest: +SKIP
    """
    if not model:
        raise HashingError("--serving-url needs --model NAME (the served model's name)")
    check_number("--timeout", timeout, 0, 86400)
    client = TFServingClient(url, model, version=version, timeout=timeout)
    if wait is not None:
        client.wait_until_available(wait)
    return client


class _Truncated(Exception):
    pass


def _parse_json(raw, where) -> dict:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MalformedResponseError(f"{where}: answer is not JSON: {raw[:100]!r}") from None
    except RecursionError:
        raise MalformedResponseError(f"{where}: answer nests JSON too deeply") from None
    if not isinstance(obj, dict):
        raise MalformedResponseError(f"{where}: answer is not a JSON object")
    if "error" in obj:
        raise ServingError(f"{where}: {obj['error']}")
    return obj


@dataclasses.dataclass
class QueryResult:
    """Neighbours of each query: ids and distances (Q, k), labels where the index has them."""

    ids: np.ndarray
    distances: np.ndarray
    labels: np.ndarray | None = None


class RetrievalClient:
    """Encode queries with a served (or in-process) model and search a HammingIndex.

    Args:
        encoder: an ``encoders.Encoder`` (a TFServingClient, an
            ``export.SavedModelEncoder`` or an ``encoders.KerasEncoder``).
        index: a ``keras_hashing.search.index.HammingIndex``.
    """

    def __init__(self, encoder, index):
        self.encoder = encoder
        self.index = index
        bits = encoder.bits
        if int(bits) != index.bits:
            raise CodeLengthError(f"the encoder makes {bits}-bit codes but the index holds "
                                  f"{index.bits}-bit codes; use the index built with the "
                                  "same model")

    def query(self, images=None, k=10, image_bytes=None) -> QueryResult:
        """k nearest database items of each query image (pixels or encoded bytes)."""
        if (images is None) == (image_bytes is None):
            raise HashingError("query needs exactly one of images= or image_bytes=")
        codes = (self.encoder.encode(images) if images is not None
                 else self.encoder.encode_bytes(image_bytes))
        codes = as_packed(codes, self.index.bits)
        distances, ids = self.index.search(codes, k)
        return QueryResult(ids=ids, distances=distances, labels=self.index.labels_of(ids))
