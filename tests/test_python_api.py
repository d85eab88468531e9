"""The Python API: docs/python_api.md's example, run block by block on a generated folder of
images, does what the document says (checked against numpy references and the run's own log), and
`import diva_tf` stays free of TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from doc_blocks import blocks
from reference_metrics import retrieval
from synthetic import make_folder_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "python_api.md")
HEADS = ["discriminative", "selfsimilarity", "shared", "intra"]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The namespace after every python block of the document ran, in order, in a folder holding
    my_images/ (12 classes of 6 images)."""
    with open(DOC) as f:
        code = [b.code for b in blocks(DOC, f.read()) if b.kind == "python"]
    assert len(code) == 8
    folder = tmp_path_factory.mktemp("api")
    make_folder_dataset(str(folder / "my_images"), n_classes=12, per_class=6)
    cwd = os.getcwd()
    os.chdir(folder)
    namespace = {"__name__": "__main__"}
    try:
        for block in code:
            exec(compile(block, DOC, "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace, str(folder)


def combined_test_embedding(model, ns):
    """The test split through the evaluation view and `model`, heads concatenated with equal
    weights and re-normalised (algorithm.md 2.4), computed here with numpy."""
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in
                           ns["diva_tf"].eval_dataset(ns["splits"].test, ns["pipeline"])])
    out = model(np.concatenate(images), training=False)
    emb = np.concatenate([np.asarray(out[h]) for h in HEADS], axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), np.concatenate(labels)


def test_fit_trains_logs_validation_metrics_and_evaluate_agrees(example):
    ns, folder = example
    history = ns["history"].history
    assert len(history["loss"]) == 2 and np.all(np.isfinite(history["loss"]))
    assert {"discriminative", "selfsimilarity", "shared", "intra", "decorrelation"} <= set(history)
    flat = {f"{name}/{metric}": float(value) for name, metrics in ns["scores"].items()
            for metric, value in metrics.items()}
    assert ns["test_scores"] == flat  # trainer.evaluate == evaluate_model after training
    assert history["val_combined[1,1,1,1]/recall@1"][-1] == flat["combined[1,1,1,1]/recall@1"]
    with open(os.path.join(folder, "history.csv")) as f:
        assert len(f.read().splitlines()) == 3  # CSVLogger: a header and one row per epoch


def test_a_registered_loss_is_the_one_that_trains(example):
    from diva_tf.objectives import registry

    ns, _ = example
    assert registry.LOSSES["contrastive"].fn is ns["contrastive"]
    assert np.isfinite(ns["custom_history"].history["discriminative"]).all()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 2)
    cosine, same = x @ x.T, (labels[:, None] == labels[None]) & ~np.eye(8, dtype=bool)
    other = labels[:, None] != labels[None]
    want = np.mean(1 - cosine[same]) + np.mean(np.maximum(cosine[other] - 0.5, 0))
    assert float(ns["contrastive"](x, labels)) == pytest.approx(want, rel=1e-5)


def test_scores_match_a_numpy_reference(example):
    ns, _ = example
    assert list(ns["scores"]) == HEADS + ["combined[1,1,1,1]"]
    emb, labels = combined_test_embedding(ns["trainer"].embedder, ns)
    want = retrieval(emb, labels, [1, 2, 4, 8])
    got = ns["scores"]["combined[1,1,1,1]"]
    assert got["n_queries"] == len(ns["splits"].test) == 36 and got["n_clusters"] == 6
    for metric in ("recall@1", "recall@2", "recall@8", "map@r"):
        assert got[metric] == pytest.approx(want[metric], abs=1e-6), metric


def test_saved_weights_rebuild_the_same_network(example):
    ns, folder = example
    diva_tf = ns["diva_tf"]
    rebuilt = diva_tf.build_embedding_model(ns["model"], seed=1)
    rebuilt.load_weights(os.path.join(folder, "my_model.weights.h5"))
    x = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    for head, value in ns["trainer"].embedder(x).items():
        np.testing.assert_allclose(rebuilt(x)[head], value, atol=1e-6)


def test_export_and_index_find_the_query_itself(example):
    ns, folder = example
    assert ns["version_dir"] == os.path.join("export", "models", "diva", "1")
    manifest = ns["diva_tf"].load_export(os.path.join(folder, ns["version_dir"])).manifest
    assert (manifest["heads"], manifest["embedding_dim"]) == (HEADS, 64)
    assert (manifest["crop"], manifest["resize"], manifest["head_weights"]) == (32, 36, [1.0] * 4)
    assert ns["index"].index.ntotal == 72
    hits = ns["hits"]
    assert hits[0].path == os.path.join(folder, ns["query"])  # the query image is indexed
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)  # cosine of a unit vector with itself
    assert hits[0].label == os.path.basename(os.path.dirname(ns["query"]))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_in_memory_arrays_make_class_balanced_two_view_batches(example):
    ns, _ = example
    assert ns["in_memory"].class_names == ["bee", "cat", "dog", "owl"]
    assert list(ns["in_memory"].labels[:10]) == [1] * 10  # "cat" x 10 first
    labels = ns["labels"].numpy()
    assert ns["view1"].shape == ns["view2"].shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(labels[0::2], labels[1::2])  # draws of 2 images of a class


def test_train_model_runs_the_cli_implementation(example):
    ns, folder = example
    workdir = os.path.join(folder, "runs", "api")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    key = "test/combined[1,1,1,1]/recall@1"
    best = max(records[1:], key=lambda r: r[key])
    assert ns["result"] == {"best": best[key], "best_epoch": best["epoch"], "selection": key,
                            "workdir": "runs/api"}
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert (saved["dataset"], saved["data_dir"], saved["bs"], saved["lr"]) == (
        "folder", "my_images", 16, 1e-3)
    assert ns["config"].to_dict() == saved
    # best.weights.h5 reproduces the logged R@1 of its epoch (k-means over 6 training classes)
    emb, labels = combined_test_embedding(ns["best_model"], ns)
    assert retrieval(emb, labels, [1])["recall@1"] == pytest.approx(best[key], abs=1e-9)


def test_import_is_cheap_and_every_name_resolves():
    code = ("import sys, diva_tf; print('tensorflow' in sys.modules); "
            "diva_tf.ModelOptions().validate(); print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.stdout.split() == ["False", "False"]
    import diva_tf

    assert all(getattr(diva_tf, name) is not None for name in diva_tf.__all__)
    with pytest.raises(AttributeError):
        diva_tf.no_such_name  # noqa: B018
