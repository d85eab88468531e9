"""The TF Serving REST stand-in: status, metadata, predict (row and columnar) against the direct
SavedModel call, TF-Serving-shaped errors, and export/client.py against it."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from diva_tf import export, serve
from export_helpers import (CLIENT, PYTHON, check, load_client, run, sample_images, tiny_config,
                            write_files)


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    from diva_tf.model import build_embedding_model

    base = str(tmp_path_factory.mktemp("models") / "diva")
    for seed in (1, 2):
        cfg = tiny_config(seed=seed)
        export.export_model(build_embedding_model(cfg), cfg, base)
    return base


@pytest.fixture(scope="module")
def server(base_path):
    srv = serve.make_server(base_path, "diva", port=0, max_request_bytes=1 << 20, policy="all")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def images():
    return sample_images()


def request(server, path, body=None, method=None):
    """(HTTP status, JSON reply) of one request to the stand-in."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        assert e.headers["Content-Type"] == "application/json"
        return e.code, json.loads(e.read())


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def direct(base_path, version, encoded):
    loaded = export.load_export(f"{base_path}/{version}")
    return {k: v.numpy() for k, v in loaded.signature()(image_bytes=np.array(encoded, object)).items()}


def test_status_lists_available_versions(server):
    status, reply = request(server, "/v1/models/diva")
    assert status == 200
    assert reply == {"model_version_status": [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in ("2", "1")]}
    assert request(server, "/v1/models/diva/versions/1")[1]["model_version_status"][0]["version"] == "1"


def test_metadata_has_both_signatures(server):
    status, reply = request(server, "/v1/models/diva/metadata")
    assert status == 200
    assert reply["model_spec"] == {"name": "diva", "signature_name": "", "version": "2"}
    sigs = reply["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert set(sigs["serving_default"]["outputs"]) == {"embedding", "discriminative",
                                                      "selfsimilarity", "shared", "intra"}
    dims = [d["size"] for d in sigs["serve_images"]["inputs"]["images"]["tensor_shape"]["dim"]]
    assert dims == ["-1", "32", "32", "3"]
    assert request(server, "/v1/models/diva/versions/1/metadata")[1]["model_spec"]["version"] == "1"


@pytest.mark.parametrize("body_of", [
    lambda enc: {"instances": [b64(e) for e in enc]},
    lambda enc: {"signature_name": "serving_default", "instances": [{"image_bytes": b64(e)} for e in enc]},
], ids=["row-b64", "row-named"])
def test_predict_row_equals_direct_call(server, base_path, images, body_of):
    encoded = list(images.values())
    status, reply = request(server, "/v1/models/diva:predict", body_of(encoded))
    assert status == 200, reply
    want = direct(base_path, 2, encoded)
    assert len(reply["predictions"]) == len(encoded)
    for name, value in want.items():
        got = np.array([row[name] for row in reply["predictions"]], np.float32)
        np.testing.assert_allclose(got, value, atol=1e-6)


@pytest.mark.parametrize("inputs_of", [
    lambda enc: [b64(e) for e in enc],
    lambda enc: {"image_bytes": [b64(e) for e in enc]},
], ids=["columnar-plain", "columnar-named"])
def test_predict_columnar_equals_direct_call(server, base_path, images, inputs_of):
    encoded = list(images.values())
    status, reply = request(server, "/v1/models/diva/versions/1:predict", {"inputs": inputs_of(encoded)})
    assert status == 200, reply
    want = direct(base_path, 1, encoded)
    assert set(reply["outputs"]) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(np.array(reply["outputs"][name], np.float32), value, atol=1e-6)


def test_predict_float_signature(server, base_path):
    images = np.random.RandomState(3).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    status, reply = request(server, "/v1/models/diva:predict",
                            {"signature_name": "serve_images", "instances": images.tolist()})
    assert status == 200, reply
    loaded = export.load_export(base_path)
    want = loaded.signature("serve_images")(images=images)["embedding"].numpy()
    np.testing.assert_allclose([r["embedding"] for r in reply["predictions"]], want, atol=1e-6)


JPEG = sample_images()["rgb.jpg"]
ERRORS = [  # (id, method, path, body, status, words in the error message)
    ("invalid-json", "POST", "/v1/models/diva:predict", b"{instances: [", 400, "JSON Parse error"),
    ("empty-body", "POST", "/v1/models/diva:predict", b"", 400, "document is empty"),
    ("not-an-object", "POST", "/v1/models/diva:predict", b"[1, 2]", 400, "Is not object"),
    ("invalid-base64", "POST", "/v1/models/diva:predict", {"instances": [{"b64": "***"}]}, 400,
     "Unable to base64 decode"),
    ("not-an-image", "POST", "/v1/models/diva:predict", {"instances": [b64(b"plain text")]}, 400,
     "Unknown image file format"),
    ("truncated-jpeg", "POST", "/v1/models/diva:predict", {"instances": [b64(JPEG[:200])]}, 400, ""),
    ("unknown-signature", "POST", "/v1/models/diva:predict",
     {"signature_name": "nope", "instances": [b64(JPEG)]}, 400, 'signature name: "nope" not found'),
    ("no-inputs", "POST", "/v1/models/diva:predict", {"signature_name": "serving_default"}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("both-formats", "POST", "/v1/models/diva:predict", {"instances": [b64(JPEG)], "inputs": [b64(JPEG)]},
     400, "only one of 'inputs' or 'instances'"),
    ("empty-instances", "POST", "/v1/models/diva:predict", {"instances": []}, 400, "No values"),
    ("wrong-key", "POST", "/v1/models/diva:predict", {"instances": [{"image": b64(JPEG)}]}, 400,
     "keys must be equal to: image_bytes"),
    ("wrong-type", "POST", "/v1/models/diva:predict", {"instances": [1.5]}, 400, "not of expected type"),
    ("wrong-shape", "POST", "/v1/models/diva:predict",
     {"signature_name": "serve_images", "instances": np.zeros((1, 8, 8, 3)).tolist()}, 400, "Expecting shape"),
    ("unknown-model", "POST", "/v1/models/other:predict", {"instances": [b64(JPEG)]}, 404,
     "Servable not found for request: Latest(other)"),
    ("unknown-version", "POST", "/v1/models/diva/versions/7:predict", {"instances": [b64(JPEG)]}, 404,
     "Servable not found for request: Specific(diva, 7)"),
    ("status-unknown-model", "GET", "/v1/models/other", None, 404, "Could not find any versions"),
    ("status-unknown-version", "GET", "/v1/models/diva/versions/7", None, 404, "Could not find version 7"),
    ("metadata-unknown-version", "GET", "/v1/models/diva/versions/7/metadata", None, 404, "Servable not found"),
    ("get-predict", "GET", "/v1/models/diva:predict", None, 400, "Malformed request: GET"),
    ("put", "PUT", "/v1/models/diva", b"{}", 400, "Malformed request: PUT"),
    ("delete", "DELETE", "/v1/models/diva", None, 400, "Malformed request: DELETE"),
    ("post-status", "POST", "/v1/models/diva", b"{}", 400, "Malformed request: POST"),
    ("oversized", "POST", "/v1/models/diva:predict", b"{" + b" " * (2 << 20) + b"}", 413, "max_request_bytes"),
]


@pytest.mark.parametrize("method,path,body,status,words", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_are_tf_serving_shaped(server, method, path, body, status, words):
    got_status, reply = request(server, path, body, method)
    assert got_status == status
    assert list(reply) == ["error"] and isinstance(reply["error"], str)
    assert words in reply["error"]


def test_server_survives_errors(server):
    request(server, "/v1/models/diva:predict", b"{")
    assert request(server, "/v1/models/diva")[0] == 200


def test_new_version_is_picked_up(base_path, tmp_path):
    from diva_tf.model import build_embedding_model

    store = serve.ModelStore("diva", base_path, "latest")
    assert store.refresh() == [2]
    cfg = tiny_config(seed=3)
    export.export_model(build_embedding_model(cfg), cfg, base_path, version=5)
    try:
        assert store.refresh() == [5]
        assert store.status("diva", None)["model_version_status"][0]["version"] == "5"
    finally:
        import shutil

        shutil.rmtree(f"{base_path}/5")


def test_client_script(server, base_path, images, tmp_path):
    """export/client.py is stdlib-only: run it as a user would, row and columnar."""
    files = write_files(str(tmp_path), images)[:2]
    want = direct(base_path, 2, [images[k] for k in list(images)[:2]])["embedding"]
    for fmt in ("row", "columnar"):
        proc = check(run([PYTHON, CLIENT, "--url", f"{server.url}/v1/models/diva:predict",
                          "--format", fmt, "--values", "3", *files]))
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 2 and "embedding shape (512,)" in lines[0]
        first = [float(x) for x in lines[0].split("[")[1].split(", ...")[0].split(", ")]
        np.testing.assert_allclose(first, want[0, :3], atol=1e-5)
    proc = run([PYTHON, CLIENT, "--url", f"{server.url}/v1/models/nope:predict", files[0]])
    assert proc.returncode == 1 and "HTTP 404" in proc.stderr and "Servable not found" in proc.stderr


def test_client_functions(server, base_path, images):
    client = load_client()
    url, version = client.pin_version(f"{server.url}/v1/models/diva:predict")
    assert version == "2" and url.endswith("/versions/2:predict")
    got = client.predict(url, [images["wide.png"]], fmt="columnar")
    np.testing.assert_allclose(got, direct(base_path, 2, [images["wide.png"]])["embedding"], atol=1e-6)
