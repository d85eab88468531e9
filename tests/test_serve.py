"""The REST stand-in (`diva_tf.tools.serve`) against TF Serving's documented REST contract.

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
import json
import os
import re
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from diva_tf import export
from diva_tf.tools import serve
from export_helpers import (CLIENT, PYTHON, check, load_client, run, sample_images, tiny_config,
                            write_files)

MODEL = "diva"
VERSIONS = (1, 2)  # exported below; the stand-in runs with policy "all", so both are served
# DataType enum names of the TensorInfo protos in a SignatureDef (tensorflow/core/framework/types.proto)
DT_NAME = {tf.string: "DT_STRING", tf.float32: "DT_FLOAT"}


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    from diva_tf.model import build_embedding_model

    base = str(tmp_path_factory.mktemp("models") / MODEL)
    for seed, version in enumerate(VERSIONS, 1):
        cfg = tiny_config(seed=seed)
        export.export_model(build_embedding_model(cfg), cfg, base, version=version)
    return base


@pytest.fixture(scope="module")
def server(base_path):
    srv = serve.make_server(base_path, MODEL, port=0, max_request_bytes=1 << 20, policy="all")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


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
    ("unknown-model-predict", "POST", "/v1/models/other:predict", {"instances": [b64(JPEG)]}, 404),
    ("unknown-version-predict", "POST", f"{S}/versions/7:predict", {"instances": [b64(JPEG)]}, 404),
    ("unknown-model-status", "GET", "/v1/models/other", None, 404),
    ("unknown-version-status", "GET", f"{S}/versions/7", None, 404),
    ("unknown-version-metadata", "GET", f"{S}/versions/7/metadata", None, 404),
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
    from diva_tf.model import build_embedding_model

    store = serve.ModelStore(MODEL, base_path, "latest")
    assert store.refresh() == [max(VERSIONS)]
    cfg = tiny_config(seed=3)
    export.export_model(build_embedding_model(cfg), cfg, base_path, version=5)
    try:
        assert store.refresh() == [5]
        assert [e["version"] for e in store.status(MODEL, None)["model_version_status"]] == ["5"]
    finally:
        import shutil

        shutil.rmtree(f"{base_path}/5")


def test_the_package_does_not_import_the_stand_in():
    """`diva_tf.tools` is test/demo tooling: no module of the package outside it imports it (at
    the top or inside a function)."""
    package = os.path.dirname(export.__file__)
    offenders = []
    for folder, _, files in os.walk(package):
        if os.path.relpath(folder, package).split(os.sep)[0] == "tools":
            continue
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
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
                if any(re.fullmatch(r"(diva_tf|\.+)\.?tools(\..*)?", t) for t in targets):
                    offenders.append(f"{os.path.relpath(path, package)}:{node.lineno}")
    assert not offenders


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
