"""A loopback stand-in for TF Serving's REST API, for tests only.

TF Serving's binary cannot be installed on these machines (no Docker engine, no
registry ships it). This server loads exported SavedModels with TensorFlow and answers
the documented REST protocol (tensorflow.org/tfx/serving/api_rest), as checked against
that page and TF Serving's ``http_rest_api_handler.cc`` / ``json_tensor.cc`` behaviour:

* ``GET /v1/models/NAME[/versions/V]`` -> ``{"model_version_status": [{"version": "V",
  "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}``
* ``GET .../metadata`` -> ``{"model_spec": {...}, "metadata": {"signature_def":
  {"signature_def": {NAME: {"inputs": ..., "outputs": ..., "method_name": ...}}}}}``
* ``POST ...:predict`` with ``instances`` (row format -> ``{"predictions": [...]}``, one
  object per row when there are several outputs) or ``inputs`` (columnar ->
  ``{"outputs": {...}}``); ``{"b64": "..."}`` objects decode to bytes;
* errors: ``{"error": "message"}`` with 404 for an unknown model/version, 400 for a
  malformed request or one that does not fit the signature.

Fault injection for client tests: ``server.faults`` = {"unavailable": n (answer 503 n
times), "error500": n (answer 500 n times), "too_many": n (answer 429 n times), "delay":
seconds, "trickle_headers": seconds per header byte, "trickle": seconds per body byte,
"nested": n (JSON nested 100,000 deep n times), "malformed": n (answer non-JSON n
times), "truncate": n (close the connection half-way through the body n times)}.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tensorflow as tf

_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata|:predict)?$")
_DTYPES = {tf.float32: "DT_FLOAT", tf.string: "DT_STRING", tf.uint8: "DT_UINT8",
           tf.int8: "DT_INT8", tf.int32: "DT_INT32", tf.int64: "DT_INT64"}


class _Handler(BaseHTTPRequestHandler):
    server: "TFServingStub"

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status, obj=None, raw=None):
        body = raw if raw is not None else json.dumps(obj).encode()
        faults = self.server.faults
        if faults.get("truncate", 0) > 0 and raw is None and status == 200:
            faults["truncate"] -= 1
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _faulted(self) -> bool:
        faults = self.server.faults
        if faults.get("delay"):
            time.sleep(faults["delay"])
        pause = faults.get("trickle_headers")
        if pause:  # the status line and headers byte by byte
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 4
            with contextlib.suppress(OSError):  # the client gives up first
                for b in head:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(pause)
            return True
        if faults.get("nested", 0) > 0:  # valid JSON nested past any parser's stack
            faults["nested"] -= 1
            self._send(200, raw=b"[" * 100000 + b"]" * 100000)
            return True
        if faults.get("too_many", 0) > 0:
            faults["too_many"] -= 1
            self._send(429, {"error": "Too many requests"})
            return True
        if faults.get("trickle"):  # headers at once, then one byte every `trickle` s
            body = json.dumps({"model_version_status": []}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for b in body:
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(faults["trickle"])
            return True
        if faults.get("error500", 0) > 0:
            faults["error500"] -= 1
            self._send(500, {"error": "Internal: something broke"})
            return True
        if faults.get("unavailable", 0) > 0:
            faults["unavailable"] -= 1
            self._send(503, {"error": "Model is not available yet"})
            return True
        if faults.get("malformed", 0) > 0:
            faults["malformed"] -= 1
            self._send(200, raw=b"<html>proxy error</html>")
            return True
        return False

    def _route(self):
        m = _PATH.match(self.path)
        if not m:
            self._send(404, {"error": f"Malformed request: {self.command} {self.path}"})
            return None
        name, version, action = m.group(1), m.group(2), m.group(3) or ""
        versions = self.server.models.get(name)
        if not versions:
            self._send(404, {"error": f"Servable not found for request: Latest({name})"})
            return None
        v = int(version) if version else max(versions)
        if v not in versions:
            self._send(404, {"error": f"Servable not found for request: Specific({name}, {v})"})
            return None
        return name, v, versions[v], action

    def _start(self):
        """Count the request, apply injected faults, route it; None when answered already."""
        self.server.requests += 1
        return None if self._faulted() else self._route()

    def do_GET(self):
        routed = self._start()
        if routed is None:
            return
        name, v, model, action = routed
        if action == "":
            self._send(200, {"model_version_status": [
                {"version": str(v), "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}}]})
        elif action == "/metadata":
            self._send(200, {"model_spec": {"name": name, "signature_name": "",
                                            "version": str(v)},
                             "metadata": {"signature_def": {"signature_def": _signatures(model)}}})
        else:
            self._send(400, {"error": "predict needs POST"})

    def do_POST(self):
        routed = self._start()
        if routed is None:
            return
        _, _, model, action = routed
        if action != ":predict":
            self._send(400, {"error": f"Malformed request: POST {self.path}"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except ValueError as e:
            self._send(400, {"error": f"JSON Parse error: {e}"})
            return
        try:
            self._send(200, _predict(model, body))
        except _BadRequest as e:
            self._send(400, {"error": str(e)})


class _BadRequest(Exception):
    pass


def _decode(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _predict(model, body):
    if not isinstance(body, dict):
        raise _BadRequest("JSON Value: not an object")
    sig_name = body.get("signature_name", "serving_default")
    if sig_name not in model.signatures:
        raise _BadRequest(f"Serving signature name: \"{sig_name}\" not found in signature def")
    fn = model.signatures[sig_name]
    specs = fn.structured_input_signature[1]
    if ("instances" in body) == ("inputs" in body):
        raise _BadRequest("Missing 'inputs' or 'instances' key" if "instances" not in body
                          else "Not both 'inputs' and 'instances' may be given")
    row = "instances" in body
    data = _decode(body["instances"] if row else body["inputs"])
    if row:
        if len(specs) == 1:
            name = next(iter(specs))
            if data and isinstance(data[0], dict):
                data = [d[name] if isinstance(d, dict) and name in d else d for d in data]
            feeds = {name: data}
        else:
            feeds = {k: [d[k] for d in data] for k in specs}
    else:
        feeds = data if isinstance(data, dict) else {next(iter(specs)): data}
    tensors = {}
    for key, spec in specs.items():
        if key not in feeds:
            raise _BadRequest(f"Missing input: {key}")
        try:
            tensors[key] = tf.constant(feeds[key], dtype=spec.dtype)
            if not spec.shape.is_compatible_with(tensors[key].shape):
                raise ValueError(f"expects shape {spec.shape}, got {tensors[key].shape}")
            out = None
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
            raise _BadRequest(f"Input to reshape / type mismatch for '{key}': {e}") from None
    try:
        out = fn(**tensors)
    except tf.errors.InvalidArgumentError as e:
        raise _BadRequest(e.message.splitlines()[0]) from None
    out = {k: v.numpy().tolist() for k, v in out.items()}
    if not row:
        return {"outputs": out}
    n = len(next(iter(out.values())))
    return {"predictions": [{k: v[i] for k, v in out.items()} for i in range(n)]}


def _signatures(model):
    def describe(spec_map, prefix):
        return {k: {"dtype": _DTYPES.get(s.dtype, str(s.dtype)),
                    "tensor_shape": {"dim": [{"size": str(-1 if d is None else d), "name": ""}
                                             for d in s.shape], "unknown_rank": False},
                    "name": f"{prefix}_{k}:0"} for k, s in spec_map.items()}

    out = {}
    for name, fn in model.signatures.items():
        out[name] = {"inputs": describe(fn.structured_input_signature[1], name),
                     "outputs": describe(fn.structured_outputs, "StatefulPartitionedCall"),
                     "method_name": "tensorflow/serving/predict"}
    return out


class TFServingStub(ThreadingHTTPServer):
    """Serve every ``base/NAME/VERSION`` SavedModel on 127.0.0.1 (port 0 = any free)."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that gave up (timeout tests) leaves a broken pipe: expected, not news.
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    def __init__(self, base, port=0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.models = {}
        self.faults = {}
        self.requests = 0
        for name in os.listdir(base):
            folder = os.path.join(base, name)
            for v in (os.listdir(folder) if os.path.isdir(folder) else ()):
                if v.isdigit():
                    self.models.setdefault(name, {})[int(v)] = tf.saved_model.load(
                        os.path.join(folder, v))
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
