"""export/k8s/: every InferenceService manifest parses and fits what this repository makes (no
cluster here, so this is what can be checked): the TF Serving one points at a model base path of
numeric version folders as `diva_tf.export` writes it, and the custom predictor runs this
package's serve entry point with flags it accepts, on the port it exposes."""

from __future__ import annotations

import glob
import os
import re
import shlex

import pytest
import yaml

from diva_tf.serving import export
from export_helpers import PYTHON, REPO, free_port, run, tiny_config

K8S = os.path.join(REPO, "export", "k8s")
MANIFESTS = sorted(glob.glob(os.path.join(K8S, "*.yaml")))


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def services() -> dict[str, dict]:
    return {os.path.basename(p): doc for p in MANIFESTS for doc in load(p)}


def test_every_manifest_is_an_inference_service():
    assert {os.path.basename(p) for p in MANIFESTS} == {"tfserving.yaml", "retrieval.yaml"}
    for name, doc in services().items():
        assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == \
            "InferenceService", name
        predictor = doc["spec"]["predictor"]
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"], name


def test_tensorflow_runtime_serves_an_export_base_path(tmp_path):
    """storageUri names a base path; diva_tf.export writes <base>/<version>/saved_model.pb into
    a folder of that name, which is what TF Serving loads."""
    from diva_tf.model.network import build_embedding_model

    model = services()["tfserving.yaml"]["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "tensorflow"
    scheme, path = model["storageUri"].split("://", 1)
    assert scheme in ("pvc", "gs", "s3")
    base = tmp_path / os.path.basename(path)
    cfg = tiny_config()
    export.export_model(build_embedding_model(cfg), cfg, str(base), version=1)
    assert export.list_versions(str(base)) == [1]
    assert (base / "1" / "saved_model.pb").is_file()
    assert os.path.basename(path) == "diva"  # the export folder the READMEs name


def _container():
    predictor = services()["retrieval.yaml"]["spec"]["predictor"]
    (container,) = predictor["containers"]
    return predictor, container


def test_custom_predictor_runs_the_serve_entry_point_with_its_flags(tmp_path):
    """The manifest's command and args, run here with the paths moved to an empty folder and a
    free port: every flag is accepted (absl would refuse an unknown one with a usage error), and
    the server gets as far as looking for the model (exit 2, one line)."""
    predictor, container = _container()
    assert container["command"] == ["python", "-m", "diva_tf.serve"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    assert set(args) == {"export_dir", "model_name", "index", "port"}
    assert int(args["port"]) == container["ports"][0]["containerPort"] == \
        container["readinessProbe"]["httpGet"]["port"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert args["export_dir"].startswith(mount) and args["index"].startswith(mount)
    assert predictor["volumes"][0]["name"] == container["volumeMounts"][0]["name"]
    moved = {**args, "export_dir": str(tmp_path / "diva"), "index": str(tmp_path / "index"),
             "port": str(free_port())}
    proc = run([PYTHON, "-m", "diva_tf.serve", *(f"--{k}={v}" for k, v in moved.items())],
               timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --export_dir {tmp_path / 'diva'}: no loadable <version>/saved_model.pb")


def test_dockerfile_builds_the_image_the_manifest_runs():
    with open(os.path.join(K8S, "Dockerfile")) as f:
        text = f.read()
    _, container = _container()
    assert re.search(r"^RUN pip install .*'\.\[cpu,serve\]'", text, re.M)
    entry = re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1)
    assert yaml.safe_load(entry) == container["command"]
    assert f"EXPOSE {container['ports'][0]['containerPort']}" in text
    for line in re.findall(r"^COPY (.*) \S+$", text, re.M):  # copied files exist in the repo
        for name in shlex.split(line):
            assert os.path.exists(os.path.join(REPO, name)), name


@pytest.mark.parametrize("name", ["tfserving.yaml", "retrieval.yaml"])
def test_readme_names_each_manifest(name):
    with open(os.path.join(REPO, "export", "README.md")) as f:
        assert f"k8s/{name}" in f.read()
