"""The search service (keras_hashing.serving.service): its API in-process, the hot swap under
load on a real server, and the page in a real headless browser."""

import base64
import contextlib
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from keras_hashing.cli import main as cli
from keras_hashing.encoders import KerasEncoder

from keras_hashing.serving import service
from keras_hashing.codes import pack_bits
from keras_hashing.search.index import HammingIndex

K = 5


@pytest.fixture(scope="module")
def collection(trained_run, digits, tmp_path_factory):
    """A folder of digit PNGs (3 classes x 12) and the index `index build` makes of it."""
    root = tmp_path_factory.mktemp("service")
    photos = root / "photos"
    for cls in (0, 1, 2):
        os.makedirs(photos / str(cls))
        for i, x in enumerate(digits.train.x[digits.train.y == cls][:12]):
            Image.fromarray(np.kron(x[..., 0], np.ones((4, 4), np.uint8))).save(
                photos / str(cls) / f"{i}.png")
    khi = root / "photos.khi"
    assert cli.main(["index", "build", "--run", trained_run.path, "--images",
                     f"folder:{photos}", "--out", str(khi), "--quiet"]) == 0
    return photos, khi


@pytest.fixture(scope="module")
def client(trained_run, collection):
    from fastapi.testclient import TestClient

    app = service.create_app(collection[1], KerasEncoder(trained_run.model))
    with TestClient(app) as c:
        yield c


def _b64(path):
    return base64.b64encode(open(path, "rb").read()).decode()


def test_search_by_codes_images_and_ids_is_what_the_index_gives(client, collection):
    photos, khi = collection
    index = HammingIndex.load(khi)
    codes = index.codes[[3, 20]]
    answer = client.post("/v1/search", json={"codes": codes.tolist(), "k": K}).json()
    dist, ids = index.search(codes, K)
    assert [r["ids"] for r in answer["results"]] == ids.tolist()
    assert [r["distances"] for r in answer["results"]] == dist.tolist()
    first = answer["results"][0]
    assert first["paths"][0] == index.paths[int(ids[0, 0])]
    assert first["labels"] == index.labels[index.positions_of(ids[0])].tolist()
    # an image file of the collection finds itself at distance 0
    path = index.paths[7]
    by_image = client.post("/v1/search", json={"images": [{"b64": _b64(path)}], "k": K}).json()
    assert by_image["results"][0]["distances"][0] == 0
    assert path in [index.paths[i] for i in by_image["results"][0]["ids"]
                    if by_image["results"][0]["distances"][0] == 0]
    by_id = client.post("/v1/search", json={"ids": [11], "k": K}).json()["results"][0]
    own_dist, own_ids = index.search(index.codes[index.positions_of([11])], K)
    # item 11 is at distance 0 from itself; with more than K ties at 0 (a well-trained
    # code) it may rank after them: the answer is the index's, ties by position
    assert by_id["distances"][0] == 0
    assert (by_id["ids"], by_id["distances"]) == (own_ids[0].tolist(), own_dist[0].tolist())
    lims, rdist, rids = index.range_search(codes, 3)
    by_radius = client.post("/v1/search", json={"codes": codes.tolist(), "radius": 3}).json()
    assert by_radius["results"][1]["ids"] == rids[lims[1]:lims[2]].tolist()


BAD_REQUESTS = [
    ("code of the wrong length", {"codes": [[1, 2, 3, 4]], "k": 3}, 400, "bytes"),
    ("code byte out of range", {"codes": [[300, 0, 0]], "k": 3}, 400, "255"),
    ("no query", {"k": 3}, 400, "exactly one of"),
    ("two kinds of query", {"codes": [[0, 0, 0]], "ids": [1]}, 400, "exactly one of"),
    ("k zero", {"codes": [[0, 0, 0]], "k": 0}, 400, "k must be"),
    ("k too large", {"codes": [[0, 0, 0]], "k": 5000}, 400, "k must be"),
    ("k and radius", {"codes": [[0, 0, 0]], "k": 3, "radius": 2}, 400, "not both"),
    ("negative radius", {"codes": [[0, 0, 0]], "radius": -1}, 400, "radius"),
    ("unknown key", {"codes": [[0, 0, 0]], "colour": 1}, 400, "colour"),
    ("k not a number", {"codes": [[0, 0, 0]], "k": "many"}, 400, "k"),
    ("not base64", {"images": [{"b64": "***"}]}, 400, "base64"),
    ("not an image", {"images": [{"b64": base64.b64encode(b"hello").decode()}]}, 400,
     "could not be decoded"),
    ("too many queries", {"ids": list(range(65))}, 400, "queries"),
    ("unknown id", {"ids": [10**6]}, 404, "not in the index"),
    # numbers beyond what numpy holds: refused before they reach it
    ("code byte past int64", {"codes": [[10**30, 0, 0]], "k": 3}, 400, "codes"),
    ("negative code byte", {"codes": [[-(10**30), 0, 0]], "k": 3}, 400, "codes"),
    ("id past int64", {"ids": [10**30]}, 400, "ids"),
    ("id below int64", {"ids": [-(10**30)]}, 400, "ids"),
    ("k past int64", {"codes": [[0, 0, 0]], "k": 10**30}, 400, "k"),
    ("radius past int64", {"codes": [[0, 0, 0]], "radius": 10**30}, 400, "radius"),
    ("radius past the longest code", {"codes": [[0, 0, 0]], "radius": 5000}, 400, "radius"),
    ("k a float", {"codes": [[0, 0, 0]], "k": 2.5}, 400, "k"),
    ("code byte a float", {"codes": [[1e30, 0, 0]], "k": 3}, 400, "codes"),
    ("rerank without signed queries", {"codes": [[0, 0, 0]], "k": 3, "rerank": 10}, 400,
     "signed"),
    ("rerank below k", {"signed": [[0.5] * 24], "k": 5, "rerank": 4}, 400, "rerank"),
    ("rerank past its cap", {"signed": [[0.5] * 24], "rerank": 10**6}, 400, "rerank"),
    ("signed of the wrong length", {"signed": [[0.5] * 5], "k": 3}, 400, "24 numbers"),
    ("signed past any float", {"signed": [[1e300] * 24]}, 400, "signed"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_client_mistakes_are_json_errors_never_500(client, case):
    _, body, status, message = case
    r = client.post("/v1/search", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text


@pytest.mark.parametrize("url", [f"/v1/items/{10**30}/thumbnail",
                                 f"/v1/items/{-(10**30)}/thumbnail", "/v1/items?seed=-1",
                                 f"/v1/items?seed={10**30}",
                                 f"/v1/items?sample={10**30}", "/v1/items?sample=0",
                                 "/v1/items/abc/thumbnail", "/v1/items?seed=1e3"])
def test_numbers_in_paths_and_queries_out_of_range_are_400(client, url):
    r = client.get(url)
    assert r.status_code == 400 and "error" in r.json(), r.text


def test_signed_queries_are_re_ranked_as_the_index_does(client, collection, trained_run):
    """The request field: signed codes (the export's `signed` output) and rerank R."""
    photos, khi = collection
    index = HammingIndex.load(khi)
    images = np.stack([np.asarray(Image.open(index.paths[i])) for i in (2, 30)])[..., None]
    model = trained_run.model
    signed = np.asarray(model.signed_code(model.embed(images)), np.float32)
    answer = client.post("/v1/search", json={"signed": signed.tolist(), "k": 3,
                                             "rerank": 20})
    assert answer.status_code == 200, answer.text
    dist, ids = index.search(pack_bits(signed >= 0), 3, rerank=signed, depth=20)
    assert [r["ids"] for r in answer.json()["results"]] == ids.tolist()
    assert [r["distances"] for r in answer.json()["results"]] == dist.tolist()
    plain = client.post("/v1/search", json={"signed": signed.tolist(), "k": 3}).json()
    assert [r["ids"] for r in plain["results"]] == index.search(
        pack_bits(signed >= 0), 3)[1].tolist()


def test_bodies_and_images_are_capped_before_decoding(client):
    r = client.post("/v1/search", content=b"{" * 100, headers={"content-type":
                                                              "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    huge = b"x" * (service.MAX_BODY_BYTES + 1)
    r = client.post("/v1/search", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413
    # a PNG header declaring 20,000 x 20,000 pixels: refused from the header alone
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0,
                                                             0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    r = client.post("/v1/search", json={"images": [{"b64": base64.b64encode(bomb).decode()}]})
    assert r.status_code == 413 and "pixels" in r.json()["error"]


def test_health_metrics_and_schema(client):
    assert client.get("/healthz").json() == {"status": "ready", "items": 36,
                                             "index_swap_refused": None}
    head = client.head("/healthz")  # probes use HEAD: it answers as GET, without a body
    assert head.status_code == 200 and head.content == b""
    client.post("/v1/search", json={"ids": [1], "k": 2})
    text = client.get("/metrics").text
    assert 'keras_hashing_requests_total{route="/v1/search",status="200"}' in text
    assert "keras_hashing_request_seconds_bucket" in text
    assert "keras_hashing_index_items 36.0" in text
    schema = client.get("/openapi.json").json()
    assert "/v1/search" in schema["paths"] and "SearchRequest" in str(schema["components"])


def test_a_token_guards_every_route_but_healthz(trained_run, collection):
    from fastapi.testclient import TestClient

    app = service.create_app(collection[1], None, token="s3cret")
    with TestClient(app) as c:
        for path in ("/", "/v1/index", "/metrics", "/v1/items/0/thumbnail", "/openapi.json"):
            assert c.get(path).status_code == 401, path
        assert c.post("/v1/search", json={"ids": [0]}).status_code == 401
        assert c.post("/v1/search", json={"ids": [0]},
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.post("/v1/search", json={"ids": [0]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/v1/items/0/thumbnail?token=s3cret").status_code == 200
        assert c.get("/?token=s3cret").status_code == 200
        # elsewhere a token in the URL (logged by proxies) is not accepted
        for path in ("/v1/index", "/metrics", "/v1/items", "/openapi.json"):
            assert c.get(f"{path}?token=s3cret").status_code == 401, path
        assert c.post("/v1/search?token=s3cret", json={"ids": [0]}).status_code == 401
        assert c.get("/healthz").status_code == 200
        # without an encoder, images are refused and codes or ids still work
        r = c.post("/v1/search", json={"images": [{"b64": "AAAA"}]},
                   headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 400 and "encodes no images" in r.json()["error"]


def test_thumbnails_come_only_from_the_collection(client, collection, tmp_path):
    from fastapi.testclient import TestClient

    r = client.get("/v1/items/4/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert max(Image.open(__import__("io").BytesIO(r.content)).size) <= service.THUMBNAIL_PX
    assert client.get("/v1/items/999/thumbnail").status_code == 404
    assert client.get("/v1/items/..%2F..%2Fetc%2Fpasswd/thumbnail").status_code in (400, 404)
    # an index whose recorded paths leave the collection: by "..", absolutely, by a link
    photos, khi = collection
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside)
    os.symlink(outside, photos / "0" / "link.png")
    try:
        index = HammingIndex.load(khi)
        evil = HammingIndex(index.bits)
        evil.add(index.codes[:3], paths=[str(photos / "0" / ".." / ".." / "secret.png"),
                                         str(outside), str(photos / "0" / "link.png")])
        evil.metadata = dict(index.metadata)
        evil.save(tmp_path / "evil.khi")
        with TestClient(service.create_app(tmp_path / "evil.khi")) as c:
            for item in range(3):
                r = c.get(f"/v1/items/{item}/thumbnail")
                assert r.status_code == 404 and "outside the collection" in r.json()["error"]
    finally:
        os.unlink(photos / "0" / "link.png")


@contextlib.contextmanager
def running_server(app, **config):
    """uvicorn on a free loopback port, in a thread, configured as `serve` configures it;
    yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(service.server_config(app, host="127.0.0.1", port=port, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_replacing_the_index_file_under_load_drops_no_request(collection, tmp_path):
    import httpx

    _, khi = collection
    live = tmp_path / "live.khi"
    shutil.copy(khi, live)
    base = HammingIndex.load(khi)
    app = service.create_app(live, None, poll_seconds=0.05)
    failures, answers, stop = [], [0], threading.Event()

    def load(seed):
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                codes = base.codes[rng.integers(0, len(base), 4)].tolist()
                try:
                    r = http.post(url + "/v1/search", json={"codes": codes, "k": 3})
                    if r.status_code != 200 or len(r.json()["results"]) != 4:
                        failures.append(r.status_code)
                    answers[0] += 1
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    with running_server(app) as url:
        workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        for swap in range(1, 6):  # each save renames a new file over the old one
            grown = HammingIndex.merge([base, _shifted(base, swap * 1000)])
            grown.save(live)
            time.sleep(0.3)
        stop.set()
        for w in workers:
            w.join()
        info = httpx.get(url + "/v1/index").json()
    assert failures == [] and answers[0] > 20
    assert info["ntotal"] == 2 * len(base) and info["swaps"] >= 1


def test_a_swap_passes_the_start_up_checks_or_keeps_the_old_index(trained_run, collection,
                                                                   tmp_path, capsys):
    from fastapi.testclient import TestClient

    from keras_hashing.runs import check_index_matches_run

    _, khi = collection
    live = tmp_path / "live.khi"
    shutil.copy(khi, live)
    good = HammingIndex.load(khi)
    app = service.create_app(
        live, KerasEncoder(trained_run.model), poll_seconds=3600,
        check_index=lambda index: check_index_matches_run(trained_run, index, "the index"))
    holder = app.state.holder
    other_model = HammingIndex.merge([good])  # same bits, another model's codes
    other_model.metadata = {**good.metadata, "model_sha256": "0" * 64, "run": "/elsewhere"}
    wider = HammingIndex(good.bits + 8)
    wider.add(np.zeros((3, (good.bits + 15) // 8), np.uint8))
    replacements = [("another model's index", lambda: other_model.save(live), "another model"),
                    ("an empty index", lambda: HammingIndex(good.bits).save(live), "no items"),
                    ("other code length", lambda: wider.save(live), "bit"),
                    ("a corrupt file", lambda: live.write_bytes(b"KHI garbage"), str(live))]
    with TestClient(app) as client:
        for refused, (what, replace, reason) in enumerate(replacements, 1):
            replace()
            assert holder.refresh() is False, what
            assert holder.current is not None and len(holder.current) == len(good), what
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(
                "keras-hashing: warning: index swap refused") and reason in err[0], (what, err)
            assert holder.refresh() is False and capsys.readouterr().err == ""  # once
            health = client.get("/healthz")
            assert health.status_code == 200 and reason in health.json()["index_swap_refused"]
            assert f"keras_hashing_index_swaps_refused {float(refused)}" in \
                client.get("/metrics").text
            answer = client.post("/v1/search", json={"ids": [0], "k": 1})
            assert answer.status_code == 200
        shutil.copy(khi, tmp_path / "fresh.khi")
        os.replace(tmp_path / "fresh.khi", live)  # a good file again: swapped in
        assert holder.refresh() is True and holder.last_refusal is None
        assert client.get("/healthz").json()["index_swap_refused"] is None


def test_serve_on_a_port_in_use_is_one_line(collection, capsys):
    _, khi = collection
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--index", str(khi), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"127.0.0.1:{port}: in use" in err, err


def _shifted(index, offset):
    other = HammingIndex(index.bits)
    other.add(index.codes, ids=index.ids + offset, labels=index.labels, paths=index.paths)
    return other


def _browser():
    """A headless Chromium driven by selenium, or the reason there is none."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        return None, ("chromium and chromium-driver are not installed (apt-get install -y "
                      "chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options), None


def test_the_page_in_a_headless_browser(trained_run, collection, tmp_path):
    """Upload an image, see k thumbnails; click a database image, see right and wrong
    labels marked. The screenshot is kept (KH_ARTIFACTS, else the test's folder)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, reason = _browser()
    if browser is None:
        pytest.skip(reason)
    photos, khi = collection
    app = service.create_app(khi, KerasEncoder(trained_run.model))
    try:
        with running_server(app) as url:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 30)
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#sample img")) == 12)
            browser.find_element(By.ID, "k").clear()
            browser.find_element(By.ID, "k").send_keys(str(K))
            browser.find_element(By.ID, "file").send_keys(str(photos / "1" / "3.png"))

            def loaded(b):
                imgs = b.find_elements(By.CSS_SELECTOR, "#results img")
                return len(imgs) == K and all(
                    b.execute_script("return arguments[0].naturalWidth", i) > 0 for i in imgs)
            wait.until(loaded)
            captions = [e.text for e in browser.find_elements(By.CSS_SELECTOR,
                                                              "#results figcaption")]
            assert captions[0].startswith("d=0")
            browser.find_elements(By.CSS_SELECTOR, "#sample img")[0].click()
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results figure.right,"
                                                     " #results figure.wrong")) == K)
            assert browser.find_element(By.ID, "error").text == ""
            out = os.environ.get("KH_ARTIFACTS") or str(tmp_path)
            os.makedirs(out, exist_ok=True)
            assert browser.save_screenshot(os.path.join(out, "service_page.png"))
    finally:
        browser.quit()


def test_cli_serve_binds_loopback_and_takes_its_token_from_the_environment(collection):
    import subprocess
    import sys

    import httpx

    _, khi = collection
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "keras_hashing", "serve", "--index",
                             str(khi), "--port", str(port)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, service.TOKEN_ENV: "t0ken"})
    url = f"http://127.0.0.1:{port}"
    try:
        service.wait_until_healthy(url)
        assert httpx.get(url + "/v1/index").status_code == 401
        info = httpx.get(url + "/v1/index", headers={"Authorization": "Bearer t0ken"}).json()
        assert info["ntotal"] == 36 and info["encodes_images"] is False
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
    assert f"serving {khi} on http://127.0.0.1:{port}/" in err
    assert "no token" not in err


def test_cli_serve_refuses_bad_settings_in_one_line(collection, capsys):
    _, khi = collection
    assert cli.main(["serve", "--index", str(khi), "--port", "70000"]) == 2
    assert "--port must be" in capsys.readouterr().err
    assert cli.main(["serve", "--index", str(khi) + ".none"]) == 2
    assert "cannot read index file" in capsys.readouterr().err
    assert cli.main(["serve", "--index", str(khi), "--serving-url", "http://127.0.0.1:9"]) == 2
    assert "needs --model" in capsys.readouterr().err


def test_batched_searches_give_each_request_its_own_exact_top_k(collection):
    import asyncio

    from keras_hashing.serving.batching import search_batcher

    index = HammingIndex.load(collection[1])
    rng = np.random.default_rng(2)
    requests = [(index.codes[rng.integers(0, len(index), n)], k)
                for n, k in ((1, 1), (3, 7), (2, 36), (5, 2), (1, 40))]

    async def all_at_once():
        batcher = search_batcher(max_delay=0.05)
        return await asyncio.gather(*(batcher.submit((index, c, k)) for c, k in requests))

    for (codes, k), (dist, ids) in zip(requests, asyncio.run(all_at_once())):
        exp_dist, exp_ids = index.search(codes, k)
        np.testing.assert_array_equal(ids, exp_ids)
        np.testing.assert_array_equal(dist, exp_dist)


def test_a_chunked_body_of_unknown_length_is_refused(client):
    def chunks():
        yield b'{"ids": [1]'
        yield b', "k": 2}'
    r = client.post("/v1/search", content=chunks(), headers={"content-type":
                                                            "application/json"})
    assert r.status_code == 411 and "Content-Length" in r.json()["error"]


def test_images_encoded_through_tf_serving_in_shared_batches(trained_run, collection,
                                                             tmp_path):
    """--serving-url: concurrent requests' images go to TF Serving in fewer predict calls
    than images, and the codes are the served model's."""
    import httpx
    from tf_serving_stub import TFServingStub

    from keras_hashing.serving.export import export_run
    from keras_hashing.serving.client import TFServingClient

    photos, khi = collection
    export_run(trained_run.path, base=str(tmp_path), name="digits")
    index = HammingIndex.load(khi)
    paths = [index.paths[i] for i in range(12)]
    with TFServingStub(str(tmp_path)) as tfs:
        encoder = TFServingClient(tfs.url, "digits")
        with running_server(service.create_app(khi, encoder, max_delay=0.05)) as url:
            assert httpx.get(url + "/healthz").json()["status"] == "ready"
            before = tfs.requests
            results = [None] * len(paths)

            def ask(i):
                results[i] = httpx.post(url + "/v1/search", timeout=30, json={
                    "images": [{"b64": _b64(paths[i])}], "k": 3}).json()
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(paths))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            predicts = tfs.requests - before
    for i, answer in enumerate(results):  # each file's nearest code is its own code
        first = answer["results"][0]
        assert first["distances"][0] == 0, answer
        np.testing.assert_array_equal(index.codes[index.positions_of([first["ids"][0]])[0]],
                                      index.codes[i])
    assert predicts < len(paths)


def _tiff_of(path):
    """The same image as a TIFF: Pillow reads its header, TensorFlow's decoder refuses it."""
    import io

    out = io.BytesIO()
    Image.open(path).save(out, format="TIFF")
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize("through", ["in-process", "tf-serving"])
def test_one_bad_image_among_concurrent_requests_fails_its_request_only(
        trained_run, collection, tmp_path, through):
    """Eight valid image requests and one the decoder refuses, arriving together and so
    batched into one encode: eight answers and one 400 naming the problem."""
    import httpx

    photos, khi = collection
    index = HammingIndex.load(khi)
    stack = contextlib.ExitStack()
    if through == "tf-serving":
        from tf_serving_stub import TFServingStub

        from keras_hashing.serving.client import TFServingClient
        from keras_hashing.serving.export import export_run

        export_run(trained_run.path, base=str(tmp_path), name="digits")
        tfs = stack.enter_context(TFServingStub(str(tmp_path)))
        encoder = TFServingClient(tfs.url, "digits")
    else:
        encoder = KerasEncoder(trained_run.model)
    bodies = [{"images": [{"b64": _b64(index.paths[i])}], "k": 3} for i in range(8)]
    bodies.insert(4, {"images": [{"b64": _tiff_of(index.paths[0])}], "k": 3})
    with stack, running_server(service.create_app(khi, encoder, max_delay=0.2)) as url:
        answers = [None] * len(bodies)

        def ask(i):
            answers[i] = httpx.post(url + "/v1/search", json=bodies[i], timeout=60)
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    statuses = [a.status_code for a in answers]
    assert statuses == [200] * 4 + [400] + [200] * 4, [a.text for a in answers]
    assert "error" in answers[4].json()
    assert all(a.json()["results"][0]["distances"][0] == 0 for a in answers if a.is_success)


def test_radius_answers_are_capped_nearest_first_and_say_when_cut(client, collection):
    index = HammingIndex.load(collection[1])
    codes = index.codes[[0, 1]].tolist()
    whole = index.range_search(np.asarray(codes, np.uint8), index.bits)
    cut = client.post("/v1/search", json={"codes": codes, "radius": index.bits,
                                          "limit": 5}).json()["results"]
    for q, result in enumerate(cut):
        lo = whole[0][q]
        assert result["ids"] == whole[2][lo:lo + 5].tolist() and result["truncated"] is True
        assert result["distances"] == sorted(result["distances"])
    uncut = client.post("/v1/search", json={"codes": codes, "radius": 0}).json()["results"]
    assert all(r["truncated"] is False for r in uncut)
    # the default cap holds with no limit given: every answer is bounded
    from keras_hashing.serving.search_request import MAX_RADIUS_RESULTS

    big = client.post("/v1/search", json={"codes": codes, "radius": index.bits}).json()
    assert all(len(r["ids"]) <= MAX_RADIUS_RESULTS for r in big["results"])
    for bad in ({"codes": codes, "k": 3, "limit": 2}, {"codes": codes, "radius": 2, "limit": 0},
                {"codes": codes, "radius": 2, "limit": 10**6}):
        r = client.post("/v1/search", json=bad)
        assert r.status_code == 400 and "limit" in r.json()["error"]


@pytest.mark.parametrize("method, url, kwargs", [
    ("GET", "/v1/search", {}), ("PUT", "/v1/index", {}), ("GET", "/nowhere", {}),
    ("POST", "/v1/search", {"content": b"{not json", "headers": {
        "content-type": "application/json"}}),
    ("POST", "/v1/search", {"content": b"\xff\xfe", "headers": {
        "content-type": "application/json"}}),
    ("DELETE", "/healthz", {}),
])
def test_every_error_answer_has_one_json_shape(client, method, url, kwargs):
    r = client.request(method, url, **kwargs)
    assert 400 <= r.status_code < 500
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str)


def test_an_index_copied_over_in_place_is_swapped_not_a_crash(trained_run, collection,
                                                              tmp_path):
    """`cp new.khi served.khi` writes the served file in place: read into memory (the
    default), the server keeps answering and swaps the new index in once it is whole."""
    import httpx

    photos, khi = collection
    served = tmp_path / "served.khi"
    shutil.copy(khi, served)
    small = HammingIndex.load(khi)
    smaller = HammingIndex(small.bits)
    smaller.add(small.codes[:5], labels=small.labels[:5])
    smaller.metadata = dict(small.metadata)
    smaller.save(tmp_path / "small.khi")
    app = service.create_app(served, KerasEncoder(trained_run.model), poll_seconds=0.05)
    with running_server(app) as url:
        codes = small.codes[:2].tolist()
        for _ in range(3):
            with open(tmp_path / "small.khi", "rb") as src, open(served, "r+b") as dst:
                dst.write(src.read())  # in place: same inode, shorter content follows
                dst.truncate()
            for _ in range(20):
                r = httpx.post(url + "/v1/search", json={"codes": codes, "k": 3}, timeout=30)
                assert r.status_code == 200
            shutil.copy(khi, served)
        deadline = time.monotonic() + 10
        while httpx.get(url + "/v1/index").json()["ntotal"] != len(small):
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "BMP"])
def test_colour_only_formats_query_a_grey_model(client, collection, fmt):
    """GIF, WebP and BMP decode in colour only: a one-channel model gets them in grey."""
    import io

    index = HammingIndex.load(collection[1])
    out = io.BytesIO()
    Image.open(index.paths[5]).convert("RGB").save(out, format=fmt)
    r = client.post("/v1/search", json={"images": [{"b64": base64.b64encode(
        out.getvalue()).decode()}], "k": 3})
    assert r.status_code == 200 and len(r.json()["results"][0]["ids"]) == 3, r.text


def _http_answer(sock) -> str:
    """One whole HTTP answer from a raw socket (headers, then content-length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_body_that_never_arrives_is_408_and_the_server_goes_on(trained_run, collection):
    """A client that declares a body and stops sending it is answered 408 after the body
    timeout, and other requests are served meanwhile."""
    import httpx

    app = service.create_app(collection[1], KerasEncoder(trained_run.model), body_timeout=1.0)
    with running_server(app) as url:
        host, port = url.split("//")[1].split(":")
        slow = socket.create_connection((host, int(port)), timeout=10)
        slow.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 1000\r\n\r\n{\"codes\": ")
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # not held up
        start = time.monotonic()
        answer = _http_answer(slow)
        assert answer.startswith("HTTP/1.1 408") and '"error"' in answer
        assert 0.5 < time.monotonic() - start < 8
        slow.close()


def test_headers_that_never_end_are_408_and_close_the_connection(trained_run, collection):
    """A client that opens connections and trickles headers (slowloris) is answered 408
    and cut off after the header timeout; the server answers others meanwhile, and a
    kept-alive connection's next request is timed the same way."""
    import httpx

    app = service.create_app(collection[1], KerasEncoder(trained_run.model))
    with running_server(app, header_timeout=1.0) as url:
        host, port = url.split("//")[1].split(":")
        slow = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        start = time.monotonic()
        for s in slow:
            answer = _http_answer(s)
            assert answer.startswith("HTTP/1.1 408") and '"error"' in answer
            assert s.recv(4096) == b""  # closed
            s.close()
        assert time.monotonic() - start < 8
        kept = socket.create_connection((host, int(port)), timeout=10)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _http_answer(kept).startswith("HTTP/1.1 200")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert _http_answer(kept).startswith("HTTP/1.1 408")
        kept.close()
