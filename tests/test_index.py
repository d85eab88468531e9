"""faiss retrieval index over an export, and the end-to-end chain workdir -> export ->
fresh-process load -> REST predict -> index search, with embeddings agreeing all along."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from diva_tf.serving import export
from diva_tf.serving import index as idx
import export_helpers as helpers
from export_helpers import (CLIENT, METRICS, PROBE, PYTHON, check, load_client, make_workdir, run,
                            start_server, tiny_config, write_files)
from synthetic import make_folder_dataset


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from diva_tf.model.network import build_embedding_model

    base = str(tmp_path_factory.mktemp("models") / "diva")
    cfg = tiny_config()
    return export.export_model(build_embedding_model(cfg, cfg.seed), cfg, base)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gallery"))
    make_folder_dataset(root, n_classes=4, per_class=3, size=40)
    with open(os.path.join(root, "class_00", "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8 not really a jpeg")
    with open(os.path.join(root, "class_01", "notes.txt"), "w") as f:
        f.write("not an image, not even looked at")
    return root


@pytest.fixture(scope="module")
def built(exported, image_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("index"))
    return idx.build_index(exported, image_dir, out, labels_from_folders=True, batch_size=5)


def test_build_writes_index_items_manifest(built, exported, image_dir):
    out = built.index_dir
    assert sorted(os.listdir(out)) == ["index.faiss", "items.json", "manifest.json"]
    m = built.manifest
    assert m["count"] == 12 and m["skipped"] == 1
    assert m["model"]["fingerprint"] == export.fingerprint(exported)
    assert m["model"]["model_version"] == 1 and m["model"]["embedding_dim"] == 512
    assert m["model"]["head_weights"] == [1.0, 1.0, 1.0, 1.0]
    assert {i["label"] for i in built.items} == {f"class_{c:02d}" for c in range(4)}
    assert not any(i["path"].endswith("broken.jpg") for i in built.items)


def test_index_vectors_are_the_savedmodel_embeddings(built, exported):
    loaded = export.load_export(exported)
    paths = [i["path"] for i in built.items]
    want = loaded.embed_bytes([open(p, "rb").read() for p in paths])
    np.testing.assert_allclose(built.index.reconstruct_n(0, len(paths)), want, atol=1e-6)


def test_search_finds_the_query_itself(built, exported):
    queries = [built.items[i]["path"] for i in (0, 5, 11)]
    results = idx.search_images(built.index_dir, exported, queries, k=3)
    for query, result in zip(queries, results):
        hits = result.hits
        assert result.ok and result.query == query and result.error is None
        assert len(hits) == 3 and hits[0].path == query
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].score >= hits[1].score >= hits[2].score


def test_refuses_another_savedmodel(built, exported):
    from diva_tf.model.network import build_embedding_model

    cfg = tiny_config(seed=7)
    other = export.export_model(build_embedding_model(cfg, cfg.seed), cfg, os.path.dirname(exported))
    with pytest.raises(idx.IndexMismatchError, match="built with another SavedModel"):
        idx.search_images(built.index_dir, other, [built.items[0]["path"]])
    with pytest.raises(idx.IndexMismatchError, match="model_version: index 1 vs given 2"):
        idx.open_index(built.index_dir, export.load_export(os.path.dirname(exported)))


def test_served_check(built):
    probe = np.asarray(built.manifest["probe"]["embedding"])
    idx.check_served(built.manifest, "1", probe, "ix")
    idx.check_served(built.manifest, "1", probe + 0.9e-3, "ix")  # float noise passes
    with pytest.raises(idx.IndexMismatchError, match="version 1 .*version 2 .*rebuild"):
        idx.check_served(built.manifest, "2", probe, "ix")
    with pytest.raises(idx.IndexMismatchError, match="embedding dim 512.*embedding dim 511"):
        idx.check_served(built.manifest, "1", probe[:511], "ix")
    with pytest.raises(idx.IndexMismatchError, match="embeds 0.0011 away .*tolerance 0.001"):
        idx.check_served(built.manifest, "1", probe - np.eye(512)[3] * 1.1e-3, "ix")
    with pytest.raises(idx.IndexMismatchError, match="embeds nan away"):
        idx.check_served(built.manifest, "1", probe * np.nan, "ix")


def test_end_to_end_chain(tmp_path, image_dir):
    """workdir -> export CLI -> fresh-process load -> REST predict -> index search CLIs."""
    workdir, model, cfg = make_workdir(str(tmp_path / "run"), seed=3, metrics=METRICS)
    base = str(tmp_path / "models" / "diva")
    version_dir = check(run([PYTHON, "-m", "diva_tf.export", "--workdir", workdir,
                             "--export_dir", base, "--head_weights", "0.5,1,1,1"])).stdout.strip()
    assert version_dir == os.path.join(base, "1")
    queries = write_files(str(tmp_path / "queries"), {
        "q0.jpg": open(os.path.join(image_dir, "class_02", "img_1.jpg"), "rb").read(),
        "q1.jpg": open(os.path.join(image_dir, "class_03", "img_2.jpg"), "rb").read()})

    # reference: the trained model itself on the evaluation pipeline, in this process
    reference = helpers.reference(model, cfg, [open(q, "rb").read() for q in queries],
                                  (0.5, 1, 1, 1))["embedding"]

    # fresh process, TensorFlow only
    probe = str(tmp_path / "probe.npz")
    check(run([PYTHON, PROBE, version_dir, probe, *queries]))
    fresh = np.load(probe)["bytes_embedding"]
    np.testing.assert_allclose(fresh, reference, atol=1e-5)

    # index built from the export; gallery holds the query images
    index_dir = str(tmp_path / "index")
    check(run([PYTHON, "-m", "diva_tf.index", "build", "--export_dir", base, "--images", image_dir,
               "--labels_from_folders", "--out", index_dir]))
    gallery = idx.RetrievalIndex.read(index_dir)

    # REST predict via the stand-in server and client.py, then neighbours through the index
    server, url = start_server(base)
    try:
        proc = check(run([PYTHON, CLIENT, "--url", f"{url}/v1/models/diva:predict", "--index",
                          index_dir, "--k", "2", *queries]))
        rest = np.array(load_client().predict(f"{url}/v1/models/diva:predict",
                                              [open(q, "rb").read() for q in queries]), np.float32)
    finally:
        server.terminate()
        server.wait(timeout=30)
    np.testing.assert_allclose(rest, fresh, atol=1e-6)
    tops = re.findall(r"^\s+1\. (\S+)\s+(\S+)\s+(\S+)$", proc.stdout, re.M)
    assert [(lbl, os.path.basename(p)) for _, lbl, p in tops] == [("class_02", "img_1.jpg"),
                                                                   ("class_03", "img_2.jpg")]
    assert all(float(score) == pytest.approx(1.0, abs=1e-4) for score, _, _ in tops)
    np.testing.assert_allclose(gallery.search(rest, 1)[0][0].score, 1.0, atol=1e-4)

    # the index search CLI gives the same top-1
    proc = check(run([PYTHON, "-m", "diva_tf.index", "search", "--index", index_dir,
                      "--export_dir", base, "--k", "1", queries[0]]))
    assert "class_02" in proc.stdout and "img_1.jpg" in proc.stdout
    manifest = export.read_manifest(version_dir)
    assert manifest["head_weights"] == [0.5, 1.0, 1.0, 1.0]
    assert manifest["metrics"]["epoch"] == 2
    assert json.load(open(os.path.join(index_dir, "manifest.json")))["model"]["metrics"] == manifest["metrics"]
