"""The REST stand-in (`diva_tf.serving.stand_in`) against TF Serving's documented REST contract.

Expectations come from the contract (tensorflow/serving `g3doc/api_rest.md`) and from the
SavedModel itself, never from the stand-in's own strings:
- `GET /v1/models/<name>[/versions/<v>]` -> `{"model_version_status": [{"version", "state",
  "status": {"error_code", "error_message"}}]}`; `.../metadata` -> `{"model_spec", "metadata":
  {"signature_def": {"signature_def": {<name>: SignatureDef}}}}` (the GetModelMetadataResponse
  protobuf as JSON).
- `POST /v1/models/<name>[/versions/<v>]:predict` with `{"signature_name"?, "instances": [...]}`
  (row: per-example values, or objects keyed by input name) -> `{"predictions": [...]}` (per
  example; objects keyed by output name when there are several outputs), or with
  `{"inputs": ...}` (columnar: a value, or an object keyed by input name) -> `{"outputs": ...}`.
- binary values travel as `{"b64": "<base64>"}`, for inputs named `*_bytes`.
- errors: HTTP 4xx with exactly `{"error": "<message>"}`.
Returned values are compared numerically with calling the SavedModel directly.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import http.client
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from diva_tf.serving import export
from diva_tf import serve as serve_cli
from diva_tf.serving import stand_in as serve
from export_helpers import (CLIENT, PYTHON, REPO, check, load_client, run, sample_images,
                            subprocess_env, tiny_config, write_files)

MODEL = "diva"
VERSIONS = (1, 2)  # exported below; the stand-in runs with policy "all", so both are served
# DataType enum names of the TensorInfo protos in a SignatureDef (tensorflow/core/framework/types.proto)
DT_NAME = {tf.string: "DT_STRING", tf.float32: "DT_FLOAT"}


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    from diva_tf.model.network import build_embedding_model

    base = str(tmp_path_factory.mktemp("models") / MODEL)
    for seed, version in enumerate(VERSIONS, 1):
        cfg = tiny_config(seed=seed)
        export.export_model(build_embedding_model(cfg), cfg, base, version=version)
    return base


@contextlib.contextmanager
def serving(srv: serve.StandInServer):
    """Answer requests in a thread while in the block."""
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def server(base_path):
    with serving(serve.make_server(base_path, MODEL, port=0, max_request_bytes=1 << 20,
                                   policy="all")) as srv:
        yield srv


def other_server(server, **limits) -> serve.StandInServer:
    """A second server on the module server's loaded models, with other limits."""
    return serve.StandInServer(server.store, port=0, limits=serve.Limits(**limits))


@pytest.fixture(scope="module")
def loaded(base_path):
    """version -> the SavedModel loaded directly with TensorFlow (the reference for every reply)."""
    return {v: tf.saved_model.load(f"{base_path}/{v}") for v in VERSIONS}


@pytest.fixture(scope="module")
def images():
    return sample_images()


def url(server, version=None, suffix=""):
    return f"{server.url}/v1/models/{MODEL}" + (f"/versions/{version}" if version else "") + suffix


def request(full_url, body=None, method=None):
    """(HTTP status, JSON reply); every reply, error or not, must be a JSON object."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(full_url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as reply:
            status, headers, raw = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    return status, doc


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def direct(loaded, version, signature="serving_default", **inputs) -> dict[str, np.ndarray]:
    fn = loaded[version].signatures[signature]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def assert_error(status, reply, want_status):
    assert status == want_status, reply
    assert list(reply) == ["error"] and isinstance(reply["error"], str) and reply["error"]


# ---- model status and metadata ------------------------------------------------------------------

def test_status_lists_every_served_version(server):
    def entry(v):
        return {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}

    status, reply = request(url(server))
    assert status == 200
    assert list(reply) == ["model_version_status"]
    assert sorted(reply["model_version_status"], key=lambda e: e["version"]) == [entry(v) for v in VERSIONS]
    for v in VERSIONS:
        assert request(url(server, v)) == (200, {"model_version_status": [entry(v)]})


def _tensor_info(spec: tf.TensorSpec) -> tuple[str, list[str] | None]:
    """(dtype enum name, dims as TensorShapeProto JSON: int64 sizes as strings, -1 = unknown)."""
    dims = None if spec.shape.rank is None else [str(-1 if d is None else d) for d in spec.shape]
    return DT_NAME[spec.dtype], dims


def _reply_tensor_info(info: dict) -> tuple[str, list[str] | None]:
    shape = info["tensor_shape"]
    return info["dtype"], (None if shape.get("unknown_rank") else [d["size"] for d in shape.get("dim", [])])


@pytest.mark.parametrize("version", [None, *VERSIONS])
def test_metadata_describes_the_savedmodel_signatures(server, loaded, version):
    status, reply = request(url(server, version, "/metadata"))
    assert status == 200
    served = version or max(VERSIONS)  # no version in the URL: the latest
    assert reply["model_spec"]["name"] == MODEL and reply["model_spec"]["version"] == str(served)
    sigs = reply["metadata"]["signature_def"]["signature_def"]
    want = loaded[served].signatures
    # TF Serving lists the SavedModel's whole SignatureDefMap, init op included
    assert set(sigs) - set(want) <= {"__saved_model_init_op"} and set(want) <= set(sigs)
    for name, fn in want.items():
        inputs = fn.structured_input_signature[1]
        assert {k: _reply_tensor_info(v) for k, v in sigs[name]["inputs"].items()} == \
            {k: _tensor_info(s) for k, s in inputs.items()}
        assert {k: _reply_tensor_info(v) for k, v in sigs[name]["outputs"].items()} == \
            {k: _tensor_info(s) for k, s in fn.structured_outputs.items()}
        assert sigs[name]["method_name"] == "tensorflow/serving/predict"


def test_binary_inputs_are_named_bytes(loaded):
    """The contract decodes {"b64": ...} for `*_bytes` inputs: the export's string input is one."""
    fn = loaded[max(VERSIONS)].signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    assert [n for n, s in specs.items() if s.dtype == tf.string] == ["image_bytes"]


# ---- predict --------------------------------------------------------------------------------------

ROW_BODIES = {  # id -> body of a row-format request for the encoded images
    "row-values": lambda enc: {"instances": [b64(e) for e in enc]},
    "row-objects": lambda enc: {"signature_name": "serving_default",
                                "instances": [{"image_bytes": b64(e)} for e in enc]},
}
COLUMNAR_BODIES = {  # id -> body of a columnar-format request
    "columnar-value": lambda enc: {"inputs": [b64(e) for e in enc]},
    "columnar-object": lambda enc: {"signature_name": "serving_default",
                                    "inputs": {"image_bytes": [b64(e) for e in enc]}},
}


def _predict(server, loaded, images, make_body, version):
    """(reply of a 200 :predict with make_body(encoded images), the SavedModel's direct outputs)."""
    encoded = list(images.values())
    status, reply = request(url(server, version, ":predict"), make_body(encoded))
    assert status == 200, reply
    return reply, direct(loaded, version or max(VERSIONS), image_bytes=np.array(encoded, object))


@pytest.mark.parametrize("version", [None, 1])
@pytest.mark.parametrize("body_id", list(ROW_BODIES))
def test_predict_row_format_equals_the_savedmodel(server, loaded, images, body_id, version):
    reply, want = _predict(server, loaded, images, ROW_BODIES[body_id], version)
    encoded = list(images.values())
    assert list(reply) == ["predictions"] and len(reply["predictions"]) == len(encoded)
    for row in reply["predictions"]:  # several outputs: one object per example, keyed by output
        assert set(row) == set(want)
    for name, value in want.items():
        got = np.array([row[name] for row in reply["predictions"]], np.float32)
        np.testing.assert_allclose(got, value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("version", [None, 1])
@pytest.mark.parametrize("body_id", list(COLUMNAR_BODIES))
def test_predict_columnar_format_equals_the_savedmodel(server, loaded, images, body_id, version):
    reply, want = _predict(server, loaded, images, COLUMNAR_BODIES[body_id], version)
    assert list(reply) == ["outputs"] and set(reply["outputs"]) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(np.array(reply["outputs"][name], np.float32), value, rtol=0, atol=1e-6)


def test_versions_are_different_models(server, images):
    """Guards the two tests above: version 1 and 2 must not answer alike."""
    body = {"instances": [b64(images["rgb.jpg"])]}
    e1 = request(url(server, 1, ":predict"), body)[1]["predictions"][0]["embedding"]
    e2 = request(url(server, 2, ":predict"), body)[1]["predictions"][0]["embedding"]
    assert np.abs(np.subtract(e1, e2)).max() > 1e-3


@pytest.mark.parametrize("fmt", ["row", "columnar"])
def test_predict_float_signature_plain_numbers(server, loaded, fmt):
    images = np.random.RandomState(3).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    key = "instances" if fmt == "row" else "inputs"
    status, reply = request(url(server, suffix=":predict"),
                            {"signature_name": "serve_images", key: images.tolist()})
    assert status == 200, reply
    want = direct(loaded, max(VERSIONS), "serve_images", images=images)["embedding"]
    got = ([r["embedding"] for r in reply["predictions"]] if fmt == "row"
           else reply["outputs"]["embedding"])
    np.testing.assert_allclose(np.array(got, np.float32), want, rtol=0, atol=1e-6)


# ---- errors: 4xx with exactly {"error": "<message>"} ------------------------------------------

JPEG = sample_images()["rgb.jpg"]
P, S = f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}"
ERRORS = [  # (id, method, path, body, HTTP status)
    ("invalid-json", "POST", P, b"{instances: [", 400),
    ("empty-body", "POST", P, b"", 400),
    ("not-an-object", "POST", P, b"[1, 2]", 400),
    ("invalid-base64", "POST", P, {"instances": [{"b64": "***"}]}, 400),
    ("b64-for-a-float-input", "POST", P, {"signature_name": "serve_images", "instances": [b64(b"x")]}, 400),
    ("no-inputs", "POST", P, {"signature_name": "serving_default"}, 400),
    ("both-formats", "POST", P, {"instances": [b64(JPEG)], "inputs": [b64(JPEG)]}, 400),
    ("empty-instances", "POST", P, {"instances": []}, 400),
    ("wrong-input-name", "POST", P, {"instances": [{"image": b64(JPEG)}]}, 400),
    ("wrong-type", "POST", P, {"instances": [1.5]}, 400),
    ("wrong-shape", "POST", P, {"signature_name": "serve_images", "instances": np.zeros((1, 8, 8, 3)).tolist()}, 400),
    ("get-predict", "GET", P, None, 400),
    ("put", "PUT", S, b"{}", 400),
    ("delete", "DELETE", S, None, 400),
    ("post-status", "POST", S, b"{}", 400),
    ("unknown-method", "BREW", S, None, 400),
    ("json-nested-100000-deep", "POST", P, b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
    ("json-integer-of-5000-digits", "POST", P, b'{"instances": [' + b"7" * 5000 + b"]}", 400),
    ("unknown-model-predict", "POST", "/v1/models/other:predict", {"instances": [b64(JPEG)]}, 404),
    ("unknown-version-predict", "POST", f"{S}/versions/7:predict", {"instances": [b64(JPEG)]}, 404),
    ("unknown-model-status", "GET", "/v1/models/other", None, 404),
    ("unknown-version-status", "GET", f"{S}/versions/7", None, 404),
    ("unknown-version-metadata", "GET", f"{S}/versions/7/metadata", None, 404),
    ("version-over-int64", "GET", f"{S}/versions/{1 << 63}", None, 400),
    ("version-of-5000-digits", "GET", f"{S}/versions/{'9' * 5000}", None, 400),
    # not TF Serving's: the stand-in's --max_request_bytes (1 MiB here), documented in export/README.md
    ("oversized", "POST", P, b"{" + b" " * (2 << 20) + b"}", 413),
]


@pytest.mark.parametrize("method,path,body,status", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_have_the_documented_shape(server, method, path, body, status):
    assert_error(*request(server.url + path, body, method), status)


@pytest.mark.parametrize("path,named", [
    ("/v1/models/other:predict", "other"), (f"{S}/versions/7:predict", "7"),
    ("/v1/models/other", "other"), (f"{S}/versions/7", "7")])
def test_not_found_errors_name_what_was_asked_for(server, path, named):
    _, reply = request(server.url + path, {"instances": [b64(JPEG)]} if ":" in path else None)
    assert named in reply["error"]


def test_unknown_signature_error_names_it(server):
    status, reply = request(url(server, suffix=":predict"), {"signature_name": "nope", "instances": [b64(JPEG)]})
    assert_error(status, reply, 400)
    assert "nope" in reply["error"]


def _without_function_name(message: str) -> str:
    """A TF error message without its `[Op:__inference_..._<id>]` suffix (ids differ per load)."""
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", message)


@pytest.mark.parametrize("data", [JPEG[:200], b"plain text"], ids=["truncated-jpeg", "not-an-image"])
def test_model_errors_are_400_with_tensorflows_message(server, loaded, data):
    """An image the graph cannot decode: TF Serving turns the model's INVALID_ARGUMENT into HTTP
    400 with TensorFlow's message; the expected message is the direct SavedModel call's."""
    with pytest.raises(tf.errors.InvalidArgumentError) as direct_error:
        direct(loaded, max(VERSIONS), image_bytes=np.array([data], object))
    status, reply = request(url(server, suffix=":predict"), {"instances": [b64(data)]})
    assert_error(status, reply, 400)
    assert _without_function_name(reply["error"]) == _without_function_name(direct_error.value.message)


def test_server_survives_errors(server):
    request(url(server, suffix=":predict"), b"{")
    assert request(url(server))[0] == 200


# ---- stand-in behaviour beyond the contract ------------------------------------------------------

def test_new_version_is_picked_up(base_path):
    from diva_tf.model.network import build_embedding_model

    store = serve.ModelStore(MODEL, base_path, "latest")
    assert store.refresh() == [max(VERSIONS)]
    cfg = tiny_config(seed=3)
    export.export_model(build_embedding_model(cfg), cfg, base_path, version=5)
    try:
        assert store.refresh() == [5]
        assert [e["version"] for e in store.status(MODEL, None)["model_version_status"]] == ["5"]
    finally:
        shutil.rmtree(f"{base_path}/5")


def test_the_package_does_not_import_the_stand_in():
    """The stand-in is test/demo tooling: no module of the package but its entry point
    `diva_tf/serve.py` imports `diva_tf.serving.stand_in` (at the top or inside a function)."""
    package = os.path.dirname(serve_cli.__file__)
    offenders = []
    for folder, _, files in os.walk(package):
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            if os.path.relpath(path, package) in ("serve.py", os.path.join("serving", "stand_in.py")):
                continue
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = "." * node.level + (node.module or "")
                    targets = [base, *(f"{base}.{a.name}" for a in node.names)]
                else:
                    continue
                if any(re.fullmatch(r"(diva_tf\.serving|\.+)\.?stand_in(\..*)?", t) for t in targets):
                    offenders.append(f"{os.path.relpath(path, package)}:{node.lineno}")
    assert not offenders


# ---- robustness: what TF Serving also guarantees (issue 25) --------------------------------------
# Every error is one reply of {"error": ...} with a 4xx/5xx status, the connection never falls out
# of step (body bytes are never read as a next request), and nothing is reset under ordinary load.

STATUS_REQUEST = f"GET {S} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
POST_HEAD = f"POST {P} HTTP/1.1\r\nHost: t\r\n".encode()
CHUNKED_HEAD = POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


def read_replies(sock: socket.socket) -> list[tuple[int, dict, dict]]:
    """Every reply until the server closes the connection: (status, lower-cased headers, JSON)."""
    raw, replies = b"".join(iter(lambda: sock.recv(1 << 16), b"")), []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        assert headers.get("content-type") == "application/json", head
        size = int(headers["content-length"])
        replies.append((int(status_line.split()[1]), headers, json.loads(raw[:size])))
        raw = raw[size:]
    return replies


def exchange(address, data: bytes, stop_writing: bool = True) -> list[tuple[int, dict, dict]]:
    """Send raw bytes on a new connection (then, by default, stop writing); the replies."""
    with socket.create_connection(address, timeout=60) as sock:
        sock.sendall(data)
        if stop_writing:
            sock.shutdown(socket.SHUT_WR)
        return read_replies(sock)


def test_a_burst_of_connections_is_queued_not_reset(server):
    """64 clients connect and send while the server is not accepting yet (as when inference holds
    it busy): all are answered. socketserver's listen queue of 5 dropped or reset the rest."""
    burst = other_server(server)
    with contextlib.ExitStack() as stack:
        stack.callback(burst.server_close)
        socks = [stack.enter_context(socket.create_connection(burst.server_address[:2], timeout=5))
                 for _ in range(64)]
        for sock in socks:
            sock.sendall(STATUS_REQUEST)
        stack.enter_context(serving(burst))
        replies = [[(status, doc) for status, _, doc in read_replies(sock)] for sock in socks]
    assert replies == [[request(url(server))]] * 64


def test_a_chunked_body_is_decoded_and_the_connection_stays_in_step(server, loaded, images):
    encoded = list(images.values())
    body = json.dumps({"instances": [b64(e) for e in encoded]}).encode()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:  # no Content-Length: http.client sends the pieces as chunks
        conn.request("POST", P, body=(body[i:i + 1000] for i in range(0, len(body), 1000)))
        first = conn.getresponse()
        status, reply = first.status, json.loads(first.read())
        conn.request("GET", S)  # the same connection
        second = conn.getresponse()
        assert (second.status, json.loads(second.read())) == request(url(server))
    finally:
        conn.close()
    assert status == 200, reply
    want = direct(loaded, max(VERSIONS), image_bytes=np.array(encoded, object))["embedding"]
    got = np.array([row["embedding"] for row in reply["predictions"]], np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


RAW_ERRORS = [  # (id, bytes sent before the client stops writing, HTTP status)
    ("content-length-not-a-number", POST_HEAD + b"Content-Length: abc\r\n\r\n{}", 400),
    ("content-length-negative", POST_HEAD + b"Content-Length: -5\r\n\r\n", 400),
    ("content-lengths-disagree", POST_HEAD + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n{}", 400),
    ("body-shorter-than-content-length", POST_HEAD + b"Content-Length: 10\r\n\r\n{}", 400),
    ("chunk-size-not-hex", CHUNKED_HEAD + b"zz\r\n", 400),
    ("chunk-shorter-than-its-size", CHUNKED_HEAD + b"10\r\nabc", 400),
    ("chunks-over-max-request-bytes", CHUNKED_HEAD + b"200000\r\n", 413),  # 2 MiB > 1 MiB
    ("unsupported-transfer-coding", POST_HEAD + b"Transfer-Encoding: gzip\r\n\r\n{}", 501),
    ("bad-http-version", f"GET {S} HTTP/x.y\r\n\r\n".encode(), 400),
]


@pytest.mark.parametrize("data,status", [e[1:] for e in RAW_ERRORS], ids=[e[0] for e in RAW_ERRORS])
def test_a_request_whose_end_is_unknown_gets_one_error_and_a_closed_connection(server, data, status):
    """Where the next request would start cannot be trusted: one JSON error, then close (before,
    a chunk was parsed as a second request and a bad Content-Length gave a 500 traceback)."""
    [(got, headers, reply)] = exchange(server.server_address[:2], data)
    assert_error(got, reply, status)
    assert headers["connection"] == "close"
    assert request(url(server))[0] == 200


def test_head_is_answered_like_get_without_a_body(server):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:
        for path, status in ((S, 200), ("/v1/models/other", 404)):
            conn.request("HEAD", path)
            head = conn.getresponse()
            head_body = head.read()
            conn.request("GET", path)  # in step: the HEAD reply carried no body
            get = conn.getresponse()
            get_body = get.read()
            assert head.status == get.status == status and head_body == b""
            assert head.headers["Content-Type"] == get.headers["Content-Type"] == "application/json"
            assert int(head.headers["Content-Length"]) == len(get_body) and json.loads(get_body)
    finally:
        conn.close()


@pytest.mark.parametrize("sent,stage", [
    (b"", None), (POST_HEAD, "headers"), (POST_HEAD + b"Content-Length: 100\r\n\r\n{", "body")],
    ids=["idle", "stalled-headers", "stalled-body"])
def test_a_silent_connection_is_closed_after_the_request_timeout(server, sent, stage):
    """An idle connection is closed without a reply; a stalled request gets 408 and a close."""
    with serving(other_server(server, request_timeout=0.5)) as quick:
        replies = exchange(quick.server_address[:2], sent, stop_writing=False)
    if stage is None:
        assert replies == []
        return
    [(status, headers, reply)] = replies
    assert_error(status, reply, 408)
    assert headers["connection"] == "close"
    assert f"Request {stage} not received" in reply["error"]
    assert "--request_timeout_seconds=0.5" in reply["error"]


# ---- image sizes from headers, and --max_image_pixels ---------------------------------------------

def _encoded(fmt: str, size=(37, 23), mode="RGB", **options) -> bytes:
    image = Image.fromarray(np.random.RandomState(5).randint(0, 256, (size[1], size[0], len(mode)))
                            .astype(np.uint8).squeeze(), mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _with_app1_thumbnail(jpeg: bytes) -> bytes:
    """An APP1 segment holding a start-of-frame of another size (as EXIF thumbnails do)."""
    fake_sof = b"\xff\xc0\x00\x11\x08" + (999).to_bytes(2, "big") * 2 + b"\x03" + b"\x00" * 9
    payload = b"Exif\x00\x00" + fake_sof
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _top_down_bmp(bmp: bytes) -> bytes:
    """The same BMP with a negative height (rows stored top-down)."""
    height = int.from_bytes(bmp[22:26], "little", signed=True)
    return bmp[:22] + (-height).to_bytes(4, "little", signed=True) + bmp[26:]


HEADER_CASES = {  # id -> encoded image; PIL's own header reading is the reference
    "png": lambda: _encoded("PNG"), "png-grey": lambda: _encoded("PNG", mode="L"),
    "jpeg": lambda: _encoded("JPEG"), "jpeg-progressive": lambda: _encoded("JPEG", progressive=True),
    "jpeg-app1-thumbnail": lambda: _with_app1_thumbnail(_encoded("JPEG")),
    "gif": lambda: _encoded("GIF"), "bmp": lambda: _encoded("BMP"),
    "bmp-top-down": lambda: _top_down_bmp(_encoded("BMP")),
    "webp-lossy": lambda: _encoded("WEBP"), "webp-lossless": lambda: _encoded("WEBP", lossless=True),
    "webp-extended": lambda: _encoded("WEBP", mode="RGBA"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_image_size_reads_the_header_of_every_format_tensorflow_decodes(case):
    data = HEADER_CASES[case]()
    with Image.open(io.BytesIO(data)) as image:
        assert serve.image_size(data) == image.size == (37, 23)


@pytest.mark.parametrize("data", [b"", b"plain text", JPEG[:4], b"\x89PNG\r\n\x1a\n\x00"],
                         ids=["empty", "not-an-image", "jpeg-cut-in-its-header", "png-cut-in-its-header"])
def test_image_size_is_none_without_a_complete_header(data):
    assert serve.image_size(data) is None


def test_images_over_max_image_pixels_are_refused_before_decoding(server, loaded, images):
    def pixels(name):
        with Image.open(io.BytesIO(images[name])) as image:
            return image.size, image.size[0] * image.size[1]

    (_, at_limit), ((w, h), over) = pixels("wide.png"), pixels("grey.png")
    assert at_limit < over
    with serving(other_server(server, max_image_pixels=at_limit)) as small:
        ok = request(url(small, 1, ":predict"), {"instances": [b64(images["wide.png"])]})
        refused = request(url(small, 1, ":predict"),
                          {"instances": [b64(images["wide.png"]), b64(images["grey.png"])]})
    assert ok[0] == 200, ok
    want = direct(loaded, 1, image_bytes=np.array([images["wide.png"]], object))["embedding"]
    np.testing.assert_allclose(np.array(ok[1]["predictions"][0]["embedding"]), want[0], atol=1e-6)
    assert_error(*refused, 400)
    assert refused[1]["error"] == (f"Input 'image_bytes' value 1: image of {w}x{h} = {over} pixels "
                                   f"exceeds --max_image_pixels={at_limit}")


def test_the_default_pixel_limit_refuses_a_small_file_of_64_megapixels(server):
    """8000x8000 one-bit PNG: a few KB that decode to 192 MB of RGB (what the graph would do)."""
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 100_000
    status, reply = request(url(server, suffix=":predict"), {"instances": [b64(buf.getvalue())]})
    assert_error(status, reply, 400)
    assert reply["error"].endswith(f"{8000 * 8000} pixels exceeds --max_image_pixels="
                                   f"{serve.Limits().max_image_pixels}")


def test_no_pixel_limit_at_zero():
    header = _encoded("PNG", size=(3, 2))
    inputs = {"image_bytes": np.array([header], object)}
    serve.check_image_pixels(inputs, 0)
    serve.check_image_pixels(inputs, 6)
    with pytest.raises(serve.RestError, match="6 pixels exceeds --max_image_pixels=5"):
        serve.check_image_pixels(inputs, 5)


# ---- versions that do not load --------------------------------------------------------------------

@pytest.mark.parametrize("policy,served", [("latest", [2]), ("all", [1, 2])])
def test_a_broken_newer_version_does_not_take_the_model_offline(base_path, loaded, images, tmp_path,
                                                              caplog, policy, served):
    """Garbage version 3: the versions that load are served (latest: the highest that loads), the
    status reports 3 as END with its error, the failure is logged once per state of its files."""
    base = tmp_path / MODEL
    base.mkdir()
    for v in VERSIONS:
        os.symlink(f"{base_path}/{v}", base / str(v))
    broken = base / "3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    store = serve.ModelStore(MODEL, str(base), policy)

    def load_errors():
        return [r for r in caplog.records if r.levelno >= logging.ERROR and str(broken) in r.getMessage()]

    with caplog.at_level(logging.ERROR):
        assert [store.refresh() for _ in range(3)] == [served] * 3  # the poll thread's calls
        assert len(load_errors()) == 1
        with serving(serve.StandInServer(store, port=0)) as srv:
            status, reply = request(url(srv))
            body = {"instances": [b64(images["rgb.jpg"])]}
            latest = request(url(srv, suffix=":predict"), body)
            assert_error(*request(url(srv, 3, ":predict"), body), 404)
        (broken / "saved_model.pb").write_bytes(b"still not a SavedModel")  # changed: retried once
        assert [store.refresh() for _ in range(2)] == [served] * 2
        assert len(load_errors()) == 2
    assert status == 200
    states = [(e["version"], e["state"], e["status"]["error_code"]) for e in reply["model_version_status"]]
    assert states == [("3", "END", "UNKNOWN"), *((str(v), "AVAILABLE", "OK") for v in reversed(served))]
    assert "saved_model.pb" in reply["model_version_status"][0]["status"]["error_message"]
    assert latest[0] == 200, latest
    want = direct(loaded, max(served), image_bytes=np.array([images["rgb.jpg"]], object))["embedding"]
    np.testing.assert_allclose(np.array(latest[1]["predictions"][0]["embedding"]), want[0], atol=1e-6)
    shutil.rmtree(broken)  # fixed by a re-export: served, its failure forgotten
    shutil.copytree(f"{base_path}/1", broken)
    assert store.refresh() == ([3] if policy == "latest" else [1, 2, 3])
    assert [e["state"] for e in store.status(MODEL, 3)["model_version_status"]] == ["AVAILABLE"]


# ---- the command line ------------------------------------------------------------------------------

def test_the_cli_applies_its_limits(base_path, images):
    proc = subprocess.Popen([PYTHON, "-m", "diva_tf.serve", "--model_base_path", base_path,
                             "--port", "0", "--max_image_pixels", "2100", "--request_timeout_seconds",
                             "0.5", "--file_system_poll_wait_seconds", "0"],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        base_url = proc.stdout.readline().split()[-1]
        status, reply = request(f"{base_url}/v1/models/{MODEL}:predict",
                                {"instances": [b64(images["grey.png"])]})
        host, port = base_url.removeprefix("http://").split(":")
        idle = exchange((host, int(port)), b"", stop_writing=False)
    finally:
        proc.terminate()
        proc.wait(60)
    assert_error(status, reply, 400)
    assert reply["error"].endswith("exceeds --max_image_pixels=2100")
    assert idle == []  # closed by the 0.5 s timeout, before the client's own 60 s


FLAGS = {"max_request_bytes": 0, "max_image_pixels": 0, "request_timeout_seconds": 0.0,
         "file_system_poll_wait_seconds": 0.0, "port": 0}


NON_NEGATIVE, PORT = "a finite number >= 0 (0 = no limit)", "in [0, 65535] (0 = ephemeral)"


@pytest.mark.parametrize("name,value,rule", [
    ("max_request_bytes", -1, NON_NEGATIVE), ("max_image_pixels", -5, NON_NEGATIVE),
    ("request_timeout_seconds", math.nan, NON_NEGATIVE),
    ("file_system_poll_wait_seconds", -0.5, NON_NEGATIVE), ("port", 65536, PORT), ("port", -1, PORT)])
def test_a_bad_flag_value_is_one_line_and_exit_2(capsys, name, value, rule):
    assert serve_cli.flag_error(types.SimpleNamespace(**FLAGS)) is None
    assert serve_cli.run(types.SimpleNamespace(**{**FLAGS, name: value})) == 2
    assert capsys.readouterr().err == f"error: --{name}={value}: must be {rule}\n"


# ---- export/client.py against the stand-in --------------------------------------------------------

def test_client_script(server, loaded, images, tmp_path):
    """export/client.py is stdlib-only: run it as a user would, row and columnar."""
    files = write_files(str(tmp_path), images)[:2]
    want = direct(loaded, max(VERSIONS), image_bytes=np.array(list(images.values())[:2], object))["embedding"]
    for fmt in ("row", "columnar"):
        proc = check(run([PYTHON, CLIENT, "--url", url(server, suffix=":predict"),
                          "--format", fmt, "--values", "3", *files]))
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 2 and f"embedding shape ({want.shape[1]},)" in lines[0]
        first = [float(x) for x in lines[0].split("[")[1].split(", ...")[0].split(", ")]
        np.testing.assert_allclose(first, want[0, :3], atol=1e-5)
    proc = run([PYTHON, CLIENT, "--url", f"{server.url}/v1/models/nope:predict", files[0]])
    assert proc.returncode == 1 and "HTTP 404" in proc.stderr


def test_client_functions(server, loaded, images):
    client = load_client()
    pinned, version = client.pin_version(url(server, suffix=":predict"))
    assert version == str(max(VERSIONS)) and pinned == url(server, max(VERSIONS), ":predict")
    got = client.predict(pinned, [images["wide.png"]], fmt="columnar")
    want = direct(loaded, max(VERSIONS), image_bytes=np.array([images["wide.png"]], object))["embedding"]
    np.testing.assert_allclose(got, want, atol=1e-6)
