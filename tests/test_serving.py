import io
import json
import socket
import threading
import time

import numpy as np
import pytest

from keras_hashing.cli import main as cli
from keras_hashing.errors import HashingError
from keras_hashing.serving.export import SavedModelEncoder, export_run
from keras_hashing.search.index import HammingIndex
from keras_hashing.errors import (BadRequestError, MalformedResponseError, ModelNotFoundError,
                                  ServingTimeoutError, ServingUnavailableError)
from keras_hashing.serving.client import RetrievalClient, TFServingClient
from tf_serving_stub import TFServingStub


@pytest.fixture(scope="module")
def served(trained_run, digits, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    export_path = export_run(trained_run.path, base=str(base), name="digits")
    index = HammingIndex(trained_run.model.bits)
    index.add(trained_run.model.encode(digits.database.x), labels=digits.database.y)
    with TFServingStub(str(base)) as server:
        yield server, export_path, index


@pytest.fixture(autouse=True)
def _clear_faults(request):
    yield
    if "served" in request.fixturenames:
        request.getfixturevalue("served")[0].faults.clear()


def client(server, **kw):
    # generous: a first predict traces the SavedModel, slow on a busy 2-core box
    return TFServingClient(server.url, "digits", **{"timeout": 30, "backoff": 0.01, **kw})


def test_status_and_metadata(served):
    server, _, _ = served
    c = client(server)
    assert c.status()["model_version_status"][0]["state"] == "AVAILABLE"
    sigs = c.metadata()["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "encode_bytes"} <= set(sigs)
    assert c.bits == 24
    assert client(server, version=1).status()["model_version_status"][0]["version"] == "1"


def test_row_and_columnar_formats_agree_with_in_process(served, trained_run, digits):
    server, _, _ = served
    c = client(server)
    x = digits.query.x[:10]
    expected = trained_run.model.encode(x)
    np.testing.assert_array_equal(c.encode(x), expected)
    np.testing.assert_array_equal(c.encode(x, columnar=True), expected)


def test_b64_bytes(served, trained_run, digits):
    from PIL import Image

    server, _, _ = served
    blobs = []
    for img in digits.query.x[:5]:
        buf = io.BytesIO()
        Image.fromarray(img[:, :, 0]).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    np.testing.assert_array_equal(client(server).encode_bytes(blobs),
                                  trained_run.model.encode(digits.query.x[:5]))


def test_retrieval_through_serving_equals_in_process_for_100_queries(served, trained_run, digits):
    server, export_path, index = served
    queries = digits.query.x[:100]
    remote = RetrievalClient(client(server), index).query(queries, k=10)
    local = RetrievalClient(SavedModelEncoder(export_path), index).query(queries, k=10)
    keras_model = RetrievalClient(trained_run.model, index).query(queries, k=10)
    np.testing.assert_array_equal(remote.ids, local.ids)
    np.testing.assert_array_equal(remote.ids, keras_model.ids)
    np.testing.assert_array_equal(remote.distances, local.distances)
    np.testing.assert_array_equal(remote.labels, digits.database.y[remote.ids])


def test_404_unknown_model_and_version(served):
    server, _, _ = served
    with pytest.raises(ModelNotFoundError, match="Could not find any versions of model nope"):
        TFServingClient(server.url, "nope", timeout=5).status()
    with pytest.raises(ModelNotFoundError, match="Servable not found for request: Latest"):
        TFServingClient(server.url, "nope", timeout=5).metadata()
    with pytest.raises(ModelNotFoundError, match="Could not find version 7") as e:
        client(server, version=7).status()
    assert e.value.status == 404


def test_400_bad_input(served):
    server, _, _ = served
    with pytest.raises(BadRequestError, match="HTTP 400"):
        client(server).encode(np.zeros((2, 28, 28, 1)))
    with pytest.raises(BadRequestError, match="signature"):
        client(server).predict(instances=[[0]], signature_name="nope")


def test_503_then_success_is_retried(served, digits):
    server, _, _ = served
    server.faults["unavailable"] = 2
    before = server.requests
    assert client(server, retries=3).encode(digits.query.x[:2]).shape == (2, 3)
    assert server.requests - before == 3


def test_503_past_the_retries_raises(served):
    server, _, _ = served
    server.faults["unavailable"] = 5
    with pytest.raises(ServingUnavailableError, match="HTTP 503"):
        client(server, retries=1).status()


def test_timeout_does_not_hang(served):
    server, _, _ = served
    server.faults["delay"] = 2.0
    start = time.monotonic()
    with pytest.raises(ServingTimeoutError, match="within 0.3 s"):
        client(server, timeout=0.3, retries=0).status()
    assert time.monotonic() - start < 1.5


def test_malformed_json_and_truncated_body(served):
    server, _, _ = served
    server.faults["malformed"] = 1
    with pytest.raises(MalformedResponseError, match="not JSON"):
        client(server, retries=0).status()
    server.faults["truncate"] = 1
    assert client(server, retries=1).status()["model_version_status"]  # retried once
    server.faults["truncate"] = 3
    with pytest.raises(MalformedResponseError, match="truncated"):
        client(server, retries=1).status()


def test_connection_refused():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ServingUnavailableError, match="cannot connect"):
        TFServingClient(f"http://127.0.0.1:{port}", "m", retries=1, backoff=0.01).status()


def test_bit_length_mismatch_between_encoder_and_index(served):
    server, _, _ = served
    from keras_hashing.errors import CodeLengthError

    with pytest.raises(CodeLengthError, match="24-bit codes but the index holds 48"):
        RetrievalClient(client(server), HammingIndex(48))


def test_cli_search_through_serving(served, digits, tmp_path, capsys):
    server, _, index = served
    index.save(tmp_path / "db.khi")
    from PIL import Image

    Image.fromarray(digits.query.x[0, :, :, 0]).save(tmp_path / "q.png")
    code = cli.main(["search", "--index", str(tmp_path / "db.khi"), "--serving-url", server.url,
                     "--model", "digits", "--images", str(tmp_path / "q.png"), "-k", "4"])
    row = json.loads(capsys.readouterr().out)
    assert code == 0 and len(row["ids"]) == 4
    expected = index.search(SavedModelEncoder(served[1]).encode(digits.query.x[:1]), 4)[1]
    assert row["ids"] == expected[0].tolist()


def test_500_is_retried_then_succeeds(served):
    server, _, _ = served
    server.faults["error500"] = 1
    assert client(server, retries=2).status()["model_version_status"]


def test_trickling_server_cannot_hold_the_client_past_its_timeout(served):
    server, _, _ = served
    server.faults["trickle"] = 0.05  # ~40-byte body -> 2 s in total
    start = time.monotonic()
    with pytest.raises(ServingTimeoutError):
        client(server, timeout=0.5, retries=0).status()
    assert time.monotonic() - start < 1.5


def test_trickled_headers_cannot_hold_the_client_past_its_timeout(served):
    """The deadline covers the whole exchange, headers included."""
    server, _, _ = served
    server.faults["trickle_headers"] = 0.02  # ~200 header bytes -> 4 s
    start = time.monotonic()
    with pytest.raises(ServingTimeoutError):
        client(server, timeout=0.5, retries=0).status()
    assert time.monotonic() - start < 1.5
    server.faults.clear()


def test_deeply_nested_json_is_a_malformed_answer(served):
    server, _, _ = served
    server.faults["nested"] = 1
    with pytest.raises(MalformedResponseError, match="nests JSON too deeply"):
        client(server, retries=0).status()


def test_429_is_retried_like_503(served):
    server, _, _ = served
    server.faults["too_many"] = 2
    assert client(server, retries=2, backoff=0.01).status()["model_version_status"]


@pytest.mark.parametrize("kwargs", [{"timeout": float("nan")}, {"timeout": 0},
                                    {"timeout": -1}, {"timeout": float("inf")},
                                    {"retries": -1}, {"backoff": "x"}])
def test_client_settings_are_checked(kwargs):
    with pytest.raises(HashingError, match="must be a number"):
        TFServingClient("http://127.0.0.1:9", "m", **kwargs)


# -- the stand-in follows TF Serving's rules, so it cannot hide a client bug ---------------

def _raw(server, method, path, body=None):
    import urllib.error
    import urllib.request

    data = None if body is None else (body if isinstance(body, bytes) else
                                      json.dumps(body).encode())
    req = urllib.request.Request(server.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_stand_in_routes_as_the_tf_serving_handler(served):
    server, _, _ = served
    assert _raw(server, "GET", "/V1/MODELS/digits")[0] == 200  # case-insensitive
    assert _raw(server, "GET", "/v1/models/digits/versions/1/METADATA")[0] == 200
    for path in ("/v1/models/digits/versions/x", "/v1/nonsense", "/v1/models/digits/extra"):
        status, body = _raw(server, "GET", path)
        assert status == 400 and "Malformed request" in body, path
    assert _raw(server, "GET", "/v1/models") == (400, '{"error": "Missing model name in '
                                                      'request."}')
    assert _raw(server, "GET", "/elsewhere")[0] == 404
    assert _raw(server, "POST", "/v1/models/digits", {"instances": [1]})[0] == 400


@pytest.mark.parametrize("body, message", [
    ({"instances": []}, "non-empty"),
    ({"instances": [{"b64": "AAAA"}]}, "base64 data"),  # bytes for a float input
    ({"instances": [{"pixels": [[0.0]]}]}, "does not have named input"),
    ({"inputs": {"images": [[[[0.0]]]], "extra": 1}}, "Unknown named input"),
    ({"instances": [[["a"]]]}, "is not of expected type"),
    ({"signature_name": 3, "instances": [1]}, "must be a string"),
    (b"", "The document is empty"),
])
def test_stand_in_rejects_what_tf_serving_rejects(served, body, message):
    server, _, _ = served
    status, answer = _raw(server, "POST", "/v1/models/digits:predict", body)
    assert status == 400 and message in json.loads(answer)["error"], answer


def test_stand_in_writes_floats_and_metadata_as_tf_serving(served):
    from tf_serving_stub import _format_float

    assert [_format_float(np.float32(v)) for v in (0.2, 1.0, 3e-5, 9000000.0, 0.1 + 1e-7)] == \
        ["0.2", "1.0", "3e-05", "9e+06", "0.100000098"]  # %g, else %.9g
    server, export_path, _ = served
    status, raw = _raw(server, "GET", "/v1/models/digits/metadata")
    meta = json.loads(raw)["metadata"]["signature_def"]
    assert meta["@type"] == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    bits = meta["signature_def"]["serving_default"]["outputs"]["bits"]
    assert bits["tensor_shape"]["dim"][-1]["size"] == "24"  # int64 as a string
    assert bits["dtype"] == "DT_UINT8" or bits["dtype"].startswith("DT_")
    assert meta["signature_def"]["encode_bytes"]["method_name"] == "tensorflow/serving/predict"


def test_a_loading_model_is_waited_for(served):
    from keras_hashing.errors import ServingUnavailableError

    server, _, _ = served
    server.loading.add("digits")
    try:
        c = client(server, retries=0)
        assert c.status()["model_version_status"][0]["state"] == "LOADING"
        with pytest.raises(ModelNotFoundError, match="Servable not found"):
            c.metadata()  # what TF Serving answers while it loads
        with pytest.raises(ServingUnavailableError, match="not available after 0.3 s"):
            c.wait_until_available(0.3, poll=0.05)
        threading.Timer(0.5, server.loading.discard, ["digits"]).start()
        start = time.monotonic()
        assert c.wait_until_available(10, poll=0.05) == [1]
        assert 0.4 < time.monotonic() - start < 5
    finally:
        server.loading.discard("digits")


def test_a_server_not_started_yet_is_waited_for():
    from keras_hashing.errors import ServingUnavailableError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = TFServingClient(f"http://127.0.0.1:{port}", "m", timeout=1, retries=0)
    start = time.monotonic()
    with pytest.raises(ServingUnavailableError, match="not available after 0.5 s"):
        c.wait_until_available(0.5, poll=0.1)
    assert time.monotonic() - start < 3


def test_version_labels(served, trained_run, digits):
    server, _, _ = served
    server.labels["digits"] = {"stable": 1}
    try:
        c = client(server, label="stable")
        assert c.model_path.endswith("/labels/stable")
        assert c.status()["model_version_status"][0]["version"] == "1"
        np.testing.assert_array_equal(c.encode(digits.query.x[:3]),
                                      trained_run.model.encode(digits.query.x[:3]))
        with pytest.raises(BadRequestError, match="Unrecognized servable version label: beta"):
            client(server, label="beta").status()
    finally:
        server.labels.clear()


def test_rerank_through_tf_serving_equals_the_run_in_process(served, trained_run, digits,
                                                             tmp_path, capsys):
    """The export's `signed` output is the run's signed code: `search --rerank` gives the
    same neighbours through TF Serving as with the run in this process."""
    from PIL import Image

    server, export_path, index = served
    index.save(tmp_path / "db.khi")
    paths = []
    for i in range(3):
        Image.fromarray(digits.query.x[i, :, :, 0]).save(tmp_path / f"q{i}.png")
        paths.append(str(tmp_path / f"q{i}.png"))
    common = ["search", "--index", str(tmp_path / "db.khi"), "--images", *paths, "-k", "5",
              "--rerank", "40"]
    assert cli.main([*common, "--serving-url", server.url, "--model", "digits"]) == 0
    served_rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cli.main([*common, "--run", trained_run.path]) == 0
    local_rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["ids"] for r in served_rows] == [r["ids"] for r in local_rows]
    signed = SavedModelEncoder(export_path)._images(
        images=np.asarray(digits.query.x[:3], np.float32))["signed"].numpy()
    model = trained_run.model
    np.testing.assert_allclose(
        signed, np.asarray(model.signed_code(model.embed(digits.query.x[:3]))), atol=1e-5)
    # and the answer is the index's re-ranking of those signed codes
    codes = SavedModelEncoder(export_path).encode(digits.query.x[:3])
    expected = index.search(codes, 5, rerank=signed, depth=40)[1].tolist()
    assert [r["ids"] for r in served_rows] == expected
    assert cli.main([*common[:-1], "3", "--run", trained_run.path]) == 2  # R < k
    assert "R >= k" in capsys.readouterr().err


def test_the_served_model_answers_the_digest_of_the_run_it_was_exported_from(served,
                                                                          trained_run):
    from keras_hashing.runs import model_digest

    server, _, _ = served
    assert client(server).model_digest() == model_digest(trained_run.path)


def test_an_index_of_another_model_is_refused_through_tf_serving_on_every_path(
        served, trained_run, digits, tmp_path, capsys):
    """The index records the digest of the model that built it; the served model answers
    its own: search and serve through TF Serving refuse an index of another model, as
    they do in process, and accept one of the served model."""
    from PIL import Image

    from keras_hashing.runs import model_digest

    server, _, index = served
    Image.fromarray(digits.query.x[0, :, :, 0]).save(tmp_path / "q.png")
    ours = HammingIndex(index.bits)
    ours.add(index.codes, labels=index.labels)
    ours.metadata = {"model_sha256": model_digest(trained_run.path), "model": "renamed"}
    ours.save(tmp_path / "ours.khi")  # the served model's codes, whatever the name says
    other = HammingIndex(index.bits)
    other.add(index.codes, labels=index.labels)
    other.metadata = {"model_sha256": "0" * 64, "model": "digits", "run": "runs/other"}
    other.save(tmp_path / "other.khi")
    search = ["search", "--serving-url", server.url, "--model", "digits", "--images",
              str(tmp_path / "q.png"), "-k", "3", "--index"]
    assert cli.main(search + [str(tmp_path / "ours.khi")]) == 0
    capsys.readouterr()
    assert cli.main(search + [str(tmp_path / "other.khi")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "built by another model (runs/other)" in err[0]
    assert cli.main(["serve", "--index", str(tmp_path / "other.khi"), "--serving-url",
                     server.url, "--model", "digits", "--port", "1"]) == 2
    assert "built by another model" in capsys.readouterr().err


def test_an_index_built_through_tf_serving_records_the_served_models_digest(
        served, trained_run, digits, tmp_path):
    from PIL import Image

    from keras_hashing.runs import model_digest

    server, _, _ = served
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "b").mkdir()
    for i in range(4):
        Image.fromarray(digits.query.x[i, :, :, 0]).save(tmp_path / "imgs" / "ab"[i % 2] /
                                                         f"{i}.png")
    assert cli.main(["index", "build", "--serving-url", server.url, "--model", "digits",
                     "--images", f"folder:{tmp_path / 'imgs'}", "--out",
                     str(tmp_path / "x.khi"), "--quiet"]) == 0
    built = HammingIndex.load(tmp_path / "x.khi")
    assert built.metadata["model_sha256"] == model_digest(trained_run.path)
