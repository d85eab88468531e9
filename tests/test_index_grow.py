"""Index types, `index add` and `index remove` on a real tiny export: hits against a numpy search
over the SavedModel's embeddings, add / remove against a rebuild from the same images, and the
refusals (another model's export, a bad factory string, a knob out of range, an unknown id), each
one `error:` line with exit 2."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from diva_tf.serving import export
from diva_tf.serving import index as idx
from export_helpers import PYTHON, run
from synthetic import make_folder_dataset
from test_index_reliability import models  # noqa: F401  (fixture: two exports, same version)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """root/old (3 classes x 2) and root/new (2 classes x 2): old is built, new is added."""
    root = tmp_path_factory.mktemp("gallery")
    make_folder_dataset(str(root / "old"), n_classes=3, per_class=2, size=40, seed=1)
    make_folder_dataset(str(root / "new"), n_classes=2, per_class=2, size=40, seed=2)
    return str(root)


def embeddings(model: str, paths: list[str]) -> np.ndarray:
    return export.load_export(model).embed_bytes([open(p, "rb").read() for p in paths])


def ranked(index: idx.RetrievalIndex, queries: np.ndarray, k: int):
    """(hit paths, hit scores) per query."""
    hits = index.search(queries, k)
    return [[h.path for h in row] for row in hits], np.array([[h.score for h in row] for row in hits])


def assert_same_hits(got, want) -> None:
    assert got[0] == want[0]
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)


@pytest.mark.parametrize("index_type", ["HNSW32", "IVF2,Flat"])
def test_index_type_on_an_export_matches_numpy(models, gallery, tmp_path, index_type):
    built = idx.build_index(models["a"], gallery, str(tmp_path / "ix"), index_type=index_type,
                            nprobe=2 if "IVF" in index_type else None)
    m = idx.RetrievalIndex.read(built.index_dir).manifest
    assert m["index_type"] == index_type and m["count"] == 10
    assert m["search"] == ({"nprobe": 2} if "IVF" in index_type else {"efSearch": 64})
    assert ("train" in m) == ("IVF" in index_type)
    paths = [i["path"] for i in built.items]
    vectors = embeddings(models["a"], paths)
    sims = vectors @ vectors.T
    for row, hits in enumerate(idx.RetrievalIndex.read(built.index_dir).search(vectors, 4)):
        order = np.argsort(-sims[row], kind="stable")[:4]
        assert [h.path for h in hits][0] == paths[row]
        np.testing.assert_allclose([h.score for h in hits], sims[row, order], atol=1e-5)


@pytest.mark.parametrize("index_type", ["Flat", "HNSW32"])
def test_add_then_remove_equals_a_rebuild(models, gallery, tmp_path, index_type):
    old, new = os.path.join(gallery, "old"), os.path.join(gallery, "new")
    grown_dir = str(tmp_path / "grown")
    idx.build_index(models["a"], old, grown_dir, index_type=index_type)
    grown = idx.add_images(grown_dir, models["a"], new)
    whole = idx.build_index(models["a"], gallery, str(tmp_path / "whole"), index_type=index_type)
    queries = embeddings(models["a"], [i["path"] for i in whole.items])
    assert grown.manifest["count"] == 10 and grown.manifest["next_id"] == 10
    assert_same_hits(ranked(grown, queries, 10), ranked(whole, queries, 10))

    again = idx.add_images(grown_dir, models["a"], gallery)  # nothing new: paths already held
    assert [i["id"] for i in again.items] == list(range(10))

    added = [i["id"] for i in grown.items if i["path"].startswith(new + os.sep)]
    shrunk = idx.remove_items(grown_dir, added[:3])
    kept = [i for i in grown.items if i["id"] not in added[:3]]
    assert shrunk.items == kept and shrunk.manifest["count"] == 7  # the others keep their ids
    rest = str(tmp_path / "rest")
    os.makedirs(rest)
    for i in kept:  # a rebuild from the same 7 images (same files, so the same embeddings)
        shutil.copy(i["path"], os.path.join(rest, f"{i['id']:02d}.jpg"))
    rebuilt = idx.build_index(models["a"], rest, str(tmp_path / "rebuilt"), index_type=index_type)
    as_rebuilt = {i["path"]: os.path.join(rest, f"{i['id']:02d}.jpg") for i in kept}
    paths, scores = ranked(shrunk, queries, 7)
    assert_same_hits(([[as_rebuilt[p] for p in row] for row in paths], scores),
                     ranked(rebuilt, queries, 7))
    assert idx.add_images(grown_dir, models["a"], gallery).manifest["next_id"] == 13  # ids not reused


REMOVE_WITHOUT_TENSORFLOW = """
import sys
from diva_tf.serving import index
shrunk = index.remove_items(sys.argv[1], [0])
print(shrunk.manifest["count"], "tensorflow" in sys.modules)
"""


def test_remove_does_not_load_tensorflow(models, gallery, tmp_path):
    """Removing items needs faiss and the index files only, not the model."""
    built = idx.build_index(models["a"], os.path.join(gallery, "old"), str(tmp_path / "i"))
    proc = run([PYTHON, "-c", REMOVE_WITHOUT_TENSORFLOW, built.index_dir])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(len(built.items) - 1), "False"]


def error_line(args: list[str]) -> str:
    proc = run([PYTHON, "-m", "diva_tf.index", *args])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_refusals_are_one_line(models, gallery, tmp_path):
    out = str(tmp_path / "ix")
    idx.build_index(models["a"], os.path.join(gallery, "old"), out)
    assert error_line(["add", "--index", out, "--export_dir", models["b"], "--images",
                       os.path.join(gallery, "new")]).startswith(
        f"error: index {out} was built with another SavedModel (")
    assert error_line(["build", "--export_dir", models["a"], "--images", gallery, "--out",
                       str(tmp_path / "x"), "--index_type", "HNSW32,Flatx"]).startswith(
        "error: --index_type 'HNSW32,Flatx': not a faiss index_factory string for 512-d vectors")
    assert error_line(["build", "--images", gallery, "--out", str(tmp_path / "x"),
                       "--index_type", "IVF2,Flat", "--nprobe", "0"]) == \
        "error: --nprobe=0: must be at least 1"
    assert error_line(["remove", "--index", out, "--ids", "4,99"]) == \
        f"error: --ids: index {out} has no item with id 99"
    assert error_line(["remove", "--index", out, "--ids", "four"]) == \
        "error: --ids=four: must be item ids (integers)"
    assert idx.RetrievalIndex.read(out).manifest["count"] == 6  # refused commands changed nothing
