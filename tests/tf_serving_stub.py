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

Held to TF Serving's rules (tensorflow/serving ``http_rest_api_util.cc``,
``http_rest_api_handler.cc``, ``json_tensor.cc``, ``server_core.cc``): the handler's
route patterns, case-insensitive, with ``/labels/L`` (an unknown label is 400); a
``/v1/...`` path they do not match is 400 "Malformed request", ``/v1/models`` without a
name 400; ``instances`` / ``inputs`` non-empty, instance objects with exactly the
inputs' keys, JSON integers for integer inputs, ``{"b64": ...}`` only for string
inputs; floats written as TF Serving writes them (shortest round-trip, "1.0" for whole
numbers); metadata converted from the SavedModel's own MetaGraphDef with protobuf's JSON
printer (int64 as strings); a status listing every version; and a LOADING mode
(``server.loading.add(NAME)``: status says LOADING, predict and metadata answer 404).

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
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf

# TF Serving's own patterns (http_rest_api_util.cc), matched whole.
_PREDICT = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                      r":(classify|regress|predict)")
_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|"
                     r"(?:/labels/([^/:]+)))?(?:/(metadata))?")
_V1 = re.compile(r"(?i)/v1/.*")

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
        """(name, version, model, action) of the request, or None once answered."""
        path = self.path.split("?", 1)[0]
        if not _V1.fullmatch(path):
            self._send(404, raw=b"")  # no handler outside /v1
            return None
        m = (_PREDICT if self.command == "POST" else _STATUS).fullmatch(path)
        if not m:
            self._send(400, {"error": f"Malformed request: {self.command} {path}"})
            return None
        name, version, label, action = m.groups()
        if not name:
            self._send(400, {"error": "Missing model name in request."})
            return None
        name = urllib.parse.unquote(name)
        versions = self.server.models.get(name)
        if label is not None:
            label = urllib.parse.unquote(label)
            if label not in self.server.labels.get(name, {}):
                self._send(400, {"error": f"Unrecognized servable version label: {label}"})
                return None
            version = str(self.server.labels[name][label])
        if not versions:
            message = (f"Could not find any versions of model {name}" if action is None and
                       self.command == "GET" else
                       f"Servable not found for request: Latest({name})")
            self._send(404, {"error": message})
            return None
        v = int(version) if version else max(versions)
        if v not in versions:
            self._send(404, {"error": f"Could not find version {v} of model {name}"
                             if action is None and self.command == "GET" else
                             f"Servable not found for request: Specific({name}, {v})"})
            return None
        loading = name in self.server.loading
        if loading and not (self.command == "GET" and action is None):
            self._send(404, {"error": f"Servable not found for request: Latest({name})"})
            return None
        return name, (v if version else None), versions, (action or "").lower()

    def _start(self):
        """Count the request, apply injected faults, route it; None when answered already."""
        self.server.requests += 1
        return None if self._faulted() else self._route()

    def do_GET(self):
        routed = self._start()
        if routed is None:
            return
        name, version, versions, action = routed
        if action == "metadata":
            v = version or max(versions)
            self._send(200, raw=json.dumps({
                "model_spec": {"name": name, "signature_name": "", "version": str(v)},
                "metadata": {"signature_def": {
                    "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                    "signature_def": _signature_defs(self.server.paths[name][v])}}}).encode())
            return
        state = "LOADING" if name in self.server.loading else "AVAILABLE"
        shown = [version] if version else sorted(versions, reverse=True)
        self._send(200, {"model_version_status": [
            {"version": str(v), "state": state,
             "status": {"error_code": "OK", "error_message": ""}} for v in shown]})

    def do_POST(self):
        routed = self._start()
        if routed is None:
            return
        _, version, versions, action = routed
        if action != "predict":
            self._send(400, {"error": f"Expected classification signature method_name to "
                                      f"be tensorflow/serving/{action}"})
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not raw.strip():
            self._send(400, {"error": "JSON Parse error: The document is empty"})
            return
        try:
            body = json.loads(raw)
        except ValueError as e:
            self._send(400, {"error": f"JSON Parse error: {e}"})
            return
        try:
            out = _predict(versions[version or max(versions)], body)
        except _BadRequest as e:
            self._send(400, {"error": str(e)})
            return
        self._send(200, raw=_json(out).encode())


class _BadRequest(Exception):
    pass


def _decode(value, is_string, where):
    """JSON -> Python values of one input: {"b64": ...} only where the input is a string
    tensor, JSON integers only where it is an integer one."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and is_string:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise _BadRequest("Unable to base64 decode") from None
        raise _BadRequest(f"JSON Value: {json.dumps(value)[:80]} not formatted correctly "
                          f"for {where}")
    if isinstance(value, list):
        return [_decode(v, is_string, where) for v in value]
    return value


def _check_numbers(value, dtype, name):
    if isinstance(value, list):
        for v in value:
            _check_numbers(v, dtype, name)
    elif dtype.is_integer and not (isinstance(value, int) and not isinstance(value, bool)):
        raise _BadRequest(f"JSON Value: {value!r} Type: {type(value).__name__} is not of "
                          f"expected type: {dtype.name} (input {name})")
    elif dtype.is_floating and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise _BadRequest(f"JSON Value: {value!r} is not of expected type: {dtype.name} "
                          f"(input {name})")


def _predict(model, body):
    if not isinstance(body, dict):
        raise _BadRequest("JSON Value: not an object")
    sig_name = body.get("signature_name", "serving_default")
    if not isinstance(sig_name, str):
        raise _BadRequest("'signature_name' key must be a string value.")
    if sig_name not in model.signatures:
        raise _BadRequest(f"Serving signature name: \"{sig_name}\" not found in signature def")
    fn = model.signatures[sig_name]
    specs = fn.structured_input_signature[1]
    if ("instances" in body) == ("inputs" in body):
        raise _BadRequest("Missing 'inputs' or 'instances' key" if "instances" not in body
                          else "Not both 'inputs' and 'instances' may be given")
    row = "instances" in body
    data = body["instances"] if row else body["inputs"]
    if row:
        if not isinstance(data, list) or not data:
            raise _BadRequest("'instances' must be a non-empty list")
        if len(specs) == 1:
            name = next(iter(specs))
            if isinstance(data[0], dict) and set(data[0]) != {"b64"}:
                for i, d in enumerate(data):
                    if not isinstance(d, dict) or set(d) != {name}:
                        raise _BadRequest(f"Failed to process element: {i} of 'instances' "
                                          f"list. JSON object: does not have named input: "
                                          f"{name}")
                data = [d[name] for d in data]
            feeds = {name: data}
        else:
            for i, d in enumerate(data):
                if not isinstance(d, dict) or set(d) != set(specs):
                    raise _BadRequest(f"Failed to process element: {i} of 'instances' list: "
                                      f"expecting an object with keys {sorted(specs)}")
            feeds = {k: [d[k] for d in data] for k in specs}
    else:
        if isinstance(data, dict):
            unknown = set(data) - set(specs)
            if unknown:
                raise _BadRequest(f"Unknown named input(s) {sorted(unknown)} in 'inputs'")
            feeds = data
        elif len(specs) == 1:
            feeds = {next(iter(specs)): data}
        else:
            raise _BadRequest("inputs is a plain value/list, but expecting an object as "
                              "multiple input tensors required as per tensorinfo_map")
    tensors = {}
    for key, spec in specs.items():
        if key not in feeds:
            raise _BadRequest(f"Missing named input: {key} in 'inputs' object.")
        value = _decode(feeds[key], spec.dtype == tf.string, "base64 data")
        if isinstance(value, list) and not value:
            raise _BadRequest(f"input {key} is empty")
        if spec.dtype != tf.string:
            _check_numbers(value, spec.dtype, key)
        try:
            tensors[key] = tf.constant(value, dtype=spec.dtype)
            if not spec.shape.is_compatible_with(tensors[key].shape):
                raise ValueError(f"Expecting shape {spec.shape} but got "
                                 f"{tensors[key].shape}")
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
            raise _BadRequest(f"Input to reshape / type mismatch for '{key}': {e}") from None
    try:
        out = fn(**tensors)
    except tf.errors.InvalidArgumentError as e:
        raise _BadRequest(e.message.splitlines()[0]) from None
    out = {k: v.numpy() for k, v in out.items()}
    if not row:
        return {"outputs": out}
    n = len(next(iter(out.values())))
    return {"predictions": [{k: v[i] for k, v in out.items()} for i in range(n)]}


def _format_float(value) -> str:
    """A float as TF Serving writes it (json_tensor.cc WriteDecimal): %g's six digits if
    that round-trips, else max_digits10, and ".0" added to whole numbers."""
    as32 = isinstance(value, np.float32)
    text = f"{float(value):g}"
    parsed = np.float32(text) if as32 else float(text)
    if parsed != value:
        text = f"{float(value):.{9 if as32 else 17}g}"
    if "." not in text and "e" not in text and text not in ("inf", "-inf", "nan"):
        text += ".0"
    return text


def _json(value) -> str:
    """JSON of predict outputs with numpy values, floats formatted as TF Serving does."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _json(value[()])
        return "[" + ", ".join(_json(v) for v in value) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_json(v) for v in value) + "]"
    if isinstance(value, (np.floating, float)):
        return _format_float(value)
    if isinstance(value, (np.integer, int)):
        return str(int(value))
    if isinstance(value, bytes):
        return json.dumps({"b64": base64.b64encode(value).decode()})
    return json.dumps(value)


def _signature_defs(export_dir) -> dict:
    """The signature defs of a SavedModel's MetaGraphDef, as protobuf's JSON printer writes
    them (field names as in the .proto, defaults printed, int64 as strings)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    return {name: json_format.MessageToDict(sig, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)
            for name, sig in saved.meta_graphs[0].signature_def.items()
            if name != "__saved_model_init_op"}


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
        self.paths = {}
        self.labels = {}  # name -> {label: version}
        self.loading = set()  # names whose status says LOADING
        self.faults = {}
        self.requests = 0
        for name in os.listdir(base):
            folder = os.path.join(base, name)
            for v in (os.listdir(folder) if os.path.isdir(folder) else ()):
                if v.isdigit():
                    self.models.setdefault(name, {})[int(v)] = tf.saved_model.load(
                        os.path.join(folder, v))
                    self.paths.setdefault(name, {})[int(v)] = os.path.join(folder, v)
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
