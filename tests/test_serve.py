"""`python -m diva_tf.serve` (KServe) as a user runs it: one server subprocess per module on a free
loopback port, every route, every refused request, version fallback, the retrieval model against
a numpy brute-force search, the index/model mismatch refusal and SIGTERM with a request in flight.

Expectations come from TF Serving's REST contract (row/columnar predict, `{"b64": ...}` inputs,
`{"error": ...}` replies), KServe's V1/V2 routes and the SavedModel called directly in this
process, never from the server's own code.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from diva_tf.serving import export
from diva_tf.serving import index as idx
from export_helpers import (CLIENT, PYTHON, check, free_port, load_client, run, sample_images,
                            start_server, tiny_config, write_files)

MODEL = "diva"
RETRIEVAL = f"{MODEL}-retrieval"
SERVED, BROKEN = 2, 3  # versions 1 and 2 load, 3 is garbage: 2 is served
LIMITS = {"max_request_bytes": 1 << 20, "max_image_pixels": 5000, "max_request_pixels": 20000}


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    from diva_tf.model.network import build_embedding_model

    base = str(tmp_path_factory.mktemp("models") / MODEL)
    for seed, version in ((1, 1), (2, SERVED)):
        cfg = tiny_config(seed=seed)
        export.export_model(build_embedding_model(cfg), cfg, base, version=version)
    os.makedirs(f"{base}/{BROKEN}")
    with open(f"{base}/{BROKEN}/saved_model.pb", "wb") as f:
        f.write(b"not a SavedModel")
    return base


@pytest.fixture(scope="module")
def images():
    return sample_images()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Class folders of the sample images (and their mirror images) for the index."""
    root = tmp_path_factory.mktemp("gallery")
    for i, (name, data) in enumerate(sample_images(seed=7).items()):
        write_files(str(root / f"class_{i % 2}"), {name: data})
    return str(root)


@pytest.fixture(scope="module")
def index_dirs(base_path, gallery, tmp_path_factory):
    """Indexes of the gallery built by the served version and by version 1."""
    out = tmp_path_factory.mktemp("indexes")
    return {v: idx.build_index(f"{base_path}/{v}", gallery, str(out / f"v{v}"),
                               labels_from_folders=True).index_dir for v in (SERVED, 1)}


@pytest.fixture(scope="module")
def server(base_path, index_dirs):
    """The module's server: the export, its retrieval model, small limits."""
    flags = ["--index", index_dirs[SERVED], "--max_k", "4"]
    flags += [f"--{k}={v}" for k, v in LIMITS.items()]
    proc, url = start_server(base_path, MODEL, *flags)
    yield proc, url
    proc.terminate()
    proc.wait(60)


@pytest.fixture(scope="module")
def url(server):
    return server[1]


@pytest.fixture(scope="module")
def loaded(base_path):
    return {v: tf.saved_model.load(f"{base_path}/{v}") for v in (1, SERVED)}


def direct(loaded, version=SERVED, signature="serving_default", **inputs) -> dict:
    fn = loaded[version].signatures[signature]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def request(full_url, body=None, method=None, content_type="application/json"):
    """(HTTP status, JSON reply); every reply, error or not, must be a JSON object."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(full_url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as reply:
            status, headers, raw = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    assert headers["Content-Type"].startswith("application/json"), raw[:200]
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    return status, doc


def assert_error(status, reply, want_status):
    assert status == want_status, reply
    assert list(reply) == ["error"] and isinstance(reply["error"], str) and reply["error"]
    assert "Traceback" not in reply["error"] and "node" not in reply["error"]


def png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


# ---- status, version fallback, KServe's own routes --------------------------------------------

def test_the_highest_version_that_loads_is_served_and_the_broken_one_reported(url):
    status, reply = request(f"{url}/v1/models/{MODEL}")
    assert status == 200 and reply["name"] == MODEL and reply["ready"] is True
    states = [(s["version"], s["state"], s["status"]["error_code"])
              for s in reply["model_version_status"]]
    assert states == [(str(BROKEN), "END", "UNKNOWN"), (str(SERVED), "AVAILABLE", "OK")]
    assert request(f"{url}/v1/models/{MODEL}/versions/{SERVED}")[1]["model_version_status"] == \
        [reply["model_version_status"][1]]


def test_a_broken_version_is_logged_once(server):
    proc = server[0]
    proc.log.seek(0)
    lines = [line for line in proc.log.read().splitlines() if "does not load" in line]
    assert len(lines) == 1 and f"version {BROKEN}" in lines[0]


@pytest.mark.parametrize("path,want", [
    ("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True}),
    (f"/v2/models/{MODEL}/ready", {"name": MODEL, "ready": True}),
    (f"/v1/models/{RETRIEVAL}", {"name": RETRIEVAL, "ready": True})])
def test_kserve_health_routes(url, path, want):
    status, reply = request(url + path)
    assert status == 200 and {k: reply[k] for k in want} == want


def test_v2_metadata_lists_the_signature(url, loaded):
    status, reply = request(f"{url}/v2/models/{MODEL}")
    assert status == 200
    fn = loaded[SERVED].signatures["serving_default"]
    assert reply["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["shape"] for o in reply["outputs"]} == {
        k: [-1, s.shape[1]] for k, s in fn.structured_outputs.items()}


def test_prometheus_metrics(url):
    request(f"{url}/v1/models/{MODEL}:predict", {"instances": [b64(png(8, 8))]})
    with urllib.request.urlopen(f"{url}/metrics", timeout=60) as reply:
        text = reply.read().decode()
    assert "# TYPE" in text and "request_predict_seconds" in text


# ---- predict, as TF Serving clients send it ----------------------------------------------------

BODIES = {  # id -> (body for encoded images, reply key)
    "row-values": (lambda enc: {"instances": [b64(e) for e in enc]}, "predictions"),
    "row-objects": (lambda enc: {"signature_name": "serving_default",
                                 "instances": [{"image_bytes": b64(e)} for e in enc]},
                    "predictions"),
    "columnar-value": (lambda enc: {"inputs": [b64(e) for e in enc]}, "outputs"),
    "columnar-object": (lambda enc: {"inputs": {"image_bytes": [b64(e) for e in enc]}},
                        "outputs"),
}


@pytest.mark.parametrize("path", [f"/v1/models/{MODEL}:predict",
                                  f"/v1/models/{MODEL}/versions/{SERVED}:predict"])
@pytest.mark.parametrize("body_id", list(BODIES))
def test_predict_equals_the_savedmodel(url, loaded, images, body_id, path):
    make, key = BODIES[body_id]
    encoded = list(images.values())
    status, reply = request(url + path, make(encoded))
    assert status == 200, reply
    want = direct(loaded, image_bytes=np.array(encoded, object))
    assert list(reply) == [key]
    for name, value in want.items():
        got = (reply[key][name] if key == "outputs"
               else [row[name] for row in reply["predictions"]])
        np.testing.assert_allclose(np.array(got, np.float32), value, rtol=0, atol=1e-6)


def test_a_body_without_json_content_type_is_read_as_json(url, loaded, images):
    """curl -d sends form encoding; TF Serving reads the body as JSON whatever the header says."""
    for content_type in ("application/x-www-form-urlencoded", None):
        status, reply = request(f"{url}/v1/models/{MODEL}:predict",
                                {"instances": [b64(images["rgb.jpg"])]}, content_type=content_type)
        assert status == 200, reply
        want = direct(loaded, image_bytes=np.array([images["rgb.jpg"]], object))["embedding"]
        np.testing.assert_allclose(reply["predictions"][0]["embedding"], want[0], atol=1e-6)


def test_float_signature(url, loaded):
    pixels = np.random.RandomState(3).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    status, reply = request(f"{url}/v1/models/{MODEL}:predict",
                            {"signature_name": "serve_images", "instances": pixels.tolist()})
    assert status == 200, reply
    want = direct(loaded, signature="serve_images", images=pixels)["embedding"]
    got = np.array([r["embedding"] for r in reply["predictions"]], np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# ---- every refused request: 4xx with exactly {"error": ...} -----------------------------------

JPEG = sample_images()["rgb.jpg"]
P = f"/v1/models/{MODEL}:predict"
R = f"/v1/models/{RETRIEVAL}:predict"
ERRORS = [  # (id, method, path, body, HTTP status)
    ("invalid-json", "POST", P, b"{instances: [", 400),
    ("empty-body", "POST", P, b"", 400),
    ("not-an-object", "POST", P, b"[1, 2]", 400),
    ("json-nested-100000-deep", "POST", P, b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
    ("json-integer-of-5000-digits", "POST", P, b'{"instances": [' + b"7" * 5000 + b"]}", 400),
    ("no-instances", "POST", P, {"signature_name": "serving_default"}, 400),
    ("empty-instances", "POST", P, {"instances": []}, 400),
    ("both-formats", "POST", P, {"instances": [b64(JPEG)], "inputs": [b64(JPEG)]}, 400),
    ("invalid-base64", "POST", P, {"instances": [{"b64": "***"}]}, 400),
    ("not-an-image", "POST", P, {"instances": [b64(b"plain text")]}, 400),
    ("truncated-image", "POST", P, {"instances": [b64(JPEG[:300])]}, 400),
    ("a-tiff", "POST", P, {"instances": [b64(b"II*\x00" + JPEG)]}, 400),
    ("image-over-max-image-pixels", "POST", P, {"instances": [b64(png(80, 80))]}, 400),
    ("request-over-max-request-pixels", "POST", P, {"instances": [b64(png(70, 70))] * 5}, 400),
    ("wrong-input-name", "POST", P, {"instances": [{"image": b64(JPEG)}]}, 400),
    ("wrong-type", "POST", P, {"instances": [1.5]}, 400),
    ("unknown-signature", "POST", P, {"signature_name": "nope", "instances": [b64(JPEG)]}, 400),
    ("wrong-shape", "POST", P, {"signature_name": "serve_images", "instances": np.zeros((1, 8, 8, 3)).tolist()}, 400),
    ("oversized-body", "POST", P, b"{" + b" " * (2 << 20) + b"}", 413),
    ("unknown-model", "POST", "/v1/models/other:predict", {"instances": [b64(JPEG)]}, 404),
    ("unknown-version", "POST", f"/v1/models/{MODEL}/versions/1:predict", {"instances": [b64(JPEG)]}, 404),
    ("broken-version", "POST", f"/v1/models/{MODEL}/versions/{BROKEN}:predict", {"instances": [b64(JPEG)]}, 404),
    ("unknown-model-status", "GET", "/v1/models/other", None, 404),
    ("unknown-version-status", "GET", f"/v1/models/{MODEL}/versions/7", None, 404),
    ("unknown-route", "GET", "/v1/nothing/here", None, 404),
    ("get-predict", "GET", P, None, 404),
    ("v2-infer", "POST", f"/v2/models/{MODEL}/infer", {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, 400),
    ("v2-unknown-model", "GET", "/v2/models/other", None, 404),
    ("retrieval-k-too-large", "POST", R, {"instances": [b64(JPEG)], "k": 5}, 400),
    ("retrieval-k-zero", "POST", R, {"instances": [b64(JPEG)], "k": 0}, 400),
    ("retrieval-k-not-an-integer", "POST", R, {"instances": [b64(JPEG)], "k": "3"}, 400),
    ("retrieval-not-an-image", "POST", R, {"instances": [b64(b"text")]}, 400),
    ("retrieval-no-instances", "POST", R, {"k": 2}, 400),
]


@pytest.mark.parametrize("method,path,body,status", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_refused_requests_are_json_errors(url, method, path, body, status):
    assert_error(*request(url + path, body, method), status)


def test_errors_say_what_was_wrong(url):
    def error(path, body):
        return request(url + path, body)[1]["error"]

    assert error(P, {"instances": [b64(png(80, 80))]}) == (
        "image 0: 80x80 = 6400 pixels exceeds --max_image_pixels=5000")
    assert "--max_request_pixels=20000" in error(P, {"instances": [b64(png(70, 70))] * 5})
    assert "nope" in error(P, {"signature_name": "nope", "instances": [b64(JPEG)]})
    assert "--max_k" in error(R, {"instances": [b64(JPEG)], "k": 5})


def test_a_chunked_body_over_the_limit_is_refused(url):
    """No Content-Length to check up front: refused once the received bytes pass the limit."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", P, body=(b" " * (1 << 16) for _ in range(40)),
                     headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        assert_error(reply.status, json.loads(reply.read()), 413)
    finally:
        conn.close()


def test_server_survives_errors(url):
    request(url + P, b"{")
    assert request(f"{url}/v1/models/{MODEL}")[0] == 200


# ---- retrieval ------------------------------------------------------------------------------

def test_retrieval_equals_a_brute_force_search(url, loaded, index_dirs, images):
    """The server's k nearest items = numpy's top k of the cosine similarities between the
    SavedModel's embeddings of the gallery files and of the queries."""
    items = json.load(open(os.path.join(index_dirs[SERVED], idx.ITEMS_FILE)))
    gallery = direct(loaded, image_bytes=np.array([open(i["path"], "rb").read() for i in items],
                                                  object))["embedding"]
    queries = list(images.values())[:3]
    q = direct(loaded, image_bytes=np.array(queries, object))["embedding"]
    status, reply = request(url + R, {"instances": [b64(e) for e in queries], "k": 3})
    assert status == 200, reply
    scores = q @ gallery.T
    for row, hits in zip(scores, reply["predictions"]):
        top = np.argsort(-row, kind="stable")[:3]
        assert [h["id"] for h in hits] == top.tolist()
        np.testing.assert_allclose([h["score"] for h in hits], row[top], atol=1e-5)
        assert [h["label"] for h in hits] == [items[i]["label"] for i in top]


def test_a_gallery_image_finds_itself(url, index_dirs):
    items = json.load(open(os.path.join(index_dirs[SERVED], idx.ITEMS_FILE)))
    query = open(items[3]["path"], "rb").read()
    status, reply = request(url + R, {"instances": [{"image_bytes": b64(query)}]})
    assert status == 200, reply
    hits = reply["predictions"][0]
    assert len(hits) == 4 and hits[0]["id"] == 3  # the default k, 5, capped by --max_k=4
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_a_mismatched_index_or_no_model_refuses_to_start(base_path, index_dirs, tmp_path):
    """Index of version 1 against served version 2; a base path without a loadable version."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for flags, message in ((["--export_dir", base_path, "--index", index_dirs[1]],
                            "was built with another SavedModel"),
                           (["--export_dir", str(empty)], "no loadable")):
        proc = run([PYTHON, "-m", "diva_tf.serve", "--port", str(free_port()), *flags],
                   timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        line = proc.stderr.strip().splitlines()[-1]  # the refusal, after the load log
        assert line.startswith("error: ") and message in line, line


# ---- export/client.py ---------------------------------------------------------------------

def test_client_prints_embeddings(url, loaded, images, tmp_path):
    files = write_files(str(tmp_path), images)[:2]
    want = direct(loaded, image_bytes=np.array(list(images.values())[:2], object))["embedding"]
    for fmt in ("row", "columnar"):
        proc = check(run([PYTHON, CLIENT, "--url", url + P, "--format", fmt, "--values", "3",
                          *files]))
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 2 and f"embedding shape ({want.shape[1]},)" in lines[0]
        first = [float(x) for x in lines[0].split("[")[1].split(", ...")[0].split(", ")]
        np.testing.assert_allclose(first, want[0, :3], atol=1e-5)
    proc = run([PYTHON, CLIENT, "--url", f"{url}/v1/models/nope:predict", files[0]])
    assert proc.returncode == 1 and "HTTP 404" in proc.stderr


def test_client_uses_the_servers_retrieval_model(url, index_dirs, gallery):
    """With --index and a server that has the retrieval model, the server searches: the index
    folder given to the client only names which index the answer must come from."""
    items = json.load(open(os.path.join(index_dirs[SERVED], idx.ITEMS_FILE)))
    query = items[2]["path"]
    proc = check(run([PYTHON, CLIENT, "--url", url + P, "--index", index_dirs[SERVED], "--k", "2",
                      query]))
    assert "server-side" in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == query and lines[1].split()[1:] == ["1.0000", items[2]["label"], query]
    # the same query searched locally gives the same lines
    client = load_client()
    assert client.retrieval_url(url + P) == f"{url}/v1/models/{RETRIEVAL}:predict"


# ---- flags ----------------------------------------------------------------------------------

FLAGS = {"max_request_bytes": 0, "max_image_pixels": 0, "max_request_pixels": 0,
         "max_decoding_pixels": 0, "port": 8501, "workers": 1, "max_k": 1}


@pytest.mark.parametrize("name,value,rule", [
    ("max_request_bytes", -1, "a number >= 0 (0 = no limit)"),
    ("max_decoding_pixels", -5, "a number >= 0 (0 = no limit)"),
    ("port", 0, "in [1, 65535]"), ("port", 65536, "in [1, 65535]"),
    ("workers", 0, "at least 1"), ("max_k", 0, "at least 1")])
def test_a_bad_flag_value_is_one_line_and_exit_2(capsys, name, value, rule):
    import types

    from diva_tf import serve as serve_cli

    assert serve_cli.flag_error(types.SimpleNamespace(**FLAGS)) is None
    assert serve_cli.run(types.SimpleNamespace(**{**FLAGS, name: value})) == 2
    assert capsys.readouterr().err == f"error: --{name}={value}: must be {rule}\n"


def test_a_port_in_use_is_one_line_and_exit_2(url):
    port = url.rsplit(":", 1)[1]
    proc = run([PYTHON, "-m", "diva_tf.serve", "--port", port, "--export_dir", "nowhere"])
    assert (proc.returncode, proc.stderr.strip().splitlines()[-1]) == (
        2, f"error: --port={port}: Address already in use")


# ---- SIGTERM: stop accepting, finish what is in flight, exit 0 ----------------------------------

def test_sigterm_finishes_the_request_in_flight_then_exits_0(server, loaded, images):
    """Send half a request, SIGTERM, then the rest: the reply is complete and right, new
    connections are refused, and the exit code is 0. Runs last: it stops the module's server."""
    proc, url = server
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"instances": [b64(images["wide.png"])]}).encode()
    head = (f"POST {P} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head + body[:100])
        time.sleep(0.5)
        proc.terminate()
        time.sleep(1.0)
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=5).close()
        sock.sendall(body[100:])
        raw = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    assert proc.wait(60) == 0
    status_line, _, rest = raw.partition(b"\r\n")
    assert b" 200 " in status_line, raw[:300]
    reply = json.loads(rest.partition(b"\r\n\r\n")[2])
    want = direct(loaded, image_bytes=np.array([images["wide.png"]], object))["embedding"]
    np.testing.assert_allclose(reply["predictions"][0]["embedding"], want[0], atol=1e-6)
