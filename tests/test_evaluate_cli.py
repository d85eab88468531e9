"""Embedding a split, reports, the retrieval PNG, and `python -m diva_tf.evaluate` on a tiny model
and a tiny image-folder dataset (from a run's workdir and from its SavedModel export)."""

from __future__ import annotations

import json
import math
import os
import types

import numpy as np
import pytest
from PIL import Image

from diva_tf import evaluate
from diva_tf.config import ConfigError
from diva_tf.evaluation import embed_dataset, format_table, save_retrievals, write_json
from diva_tf.evaluation.retrievals import (CAPTION_LINE, CORRECT_FRAME, QUERY_FRAME, WRONG_FRAME,
                                          pick_queries, retrieval_grid)
from export_helpers import PYTHON, check, make_workdir, run
from synthetic import make_folder_dataset

HEADS = ["discriminative", "selfsimilarity", "shared", "intra"]


# ---- embed_dataset, reports --------------------------------------------------------------------
def fake_embed(images):
    flat = np.asarray(images, np.float32).reshape(len(images), -1)[:, :3] + 1.0
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    return {"a": unit, "b": unit[:, ::-1], "embedding": unit}


def test_embed_dataset_keeps_order_and_every_output():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (10, 2, 2, 3)).astype(np.float32)
    labels = np.arange(10) % 4
    batches = [(images[i:i + 4], labels[i:i + 4]) for i in range(0, 10, 4)]
    embs, out_labels = embed_dataset(fake_embed, batches, verbose=False)
    assert sorted(embs) == ["a", "b", "embedding"] and embs["a"].shape == (10, 3)
    np.testing.assert_allclose(embs["a"], fake_embed(images)["a"], rtol=1e-6)
    assert out_labels.dtype == np.int64 and out_labels.tolist() == labels.tolist()
    with pytest.raises(ValueError, match="empty"):
        embed_dataset(fake_embed, [], verbose=False)


def test_embed_dataset_on_tf_data_with_progbar(capsys):
    tf = pytest.importorskip("tensorflow")
    images = np.ones((5, 2, 2, 3), np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(5))).batch(2)
    embs, labels = embed_dataset(lambda x: {"a": tf.math.l2_normalize(x[:, 0, 0], -1)}, ds)
    assert embs["a"].shape == (5, 3) and labels.tolist() == [0, 1, 2, 3, 4]
    assert "3/3" in capsys.readouterr().out


def test_table_and_json(tmp_path):
    results = {"discriminative": {"recall@1": 0.5, "nmi": float("nan"), "n_queries": 3},
               "combined[0.5,1]": {"recall@1": 0.25, "nmi": 0.125, "n_queries": 3}}
    table = format_table(results).splitlines()
    assert table[0].split() == ["embedding", "recall@1", "nmi", "n_queries"]
    assert table[2].split() == ["discriminative", "0.5000", "nan", "3"]
    path = str(tmp_path / "sub" / "r.json")
    write_json(path, results, {"k": [1, 2]})
    data = json.load(open(path))
    assert data["results"]["discriminative"]["nmi"] is None
    assert data["results"]["combined[0.5,1]"] == results["combined[0.5,1]"]
    assert data["meta"] == {"k": [1, 2]}


# ---- retrieval PNG -----------------------------------------------------------------------------
def test_retrieval_grid_size_and_frames(tmp_path):
    tile, border, k = 10, 2, 3
    tiles = [[Image.new("RGB", (tile, tile), (0, 0, 255 - i)) for i in range(k + 1)] for _ in range(2)]
    correct = np.array([[True, False, True], [False, False, True]])
    grid = retrieval_grid(tiles, correct, tile, border)
    cell = tile + 2 * border
    assert grid.size == ((k + 1) * cell + border, 2 * cell)
    for row in range(2):
        y = row * cell
        assert grid.getpixel((0, y)) == QUERY_FRAME
        assert grid.getpixel((border + 1, y + border + 1)) == (0, 0, 255)  # the query tile
        for j in range(k):
            x = (j + 1) * cell + border
            frame = CORRECT_FRAME if correct[row, j] else WRONG_FRAME
            assert grid.getpixel((x, y)) == frame
            assert grid.getpixel((x + cell - 1, y + cell - 1)) == frame
            assert grid.getpixel((x + border, y + border)) == (0, 0, 254 - j)


def test_save_retrievals_png(tmp_path):
    # items: class c is the grey level 40 * c, two items per class; angles 0, 1 | 90, 91 | 180, 3
    # degrees: item 5 of class 2 sits with class 0
    labels = np.array([0, 0, 1, 1, 2, 2])
    angles = np.radians([0, 1, 90, 91, 180, 3])
    emb = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    images = [np.full((20, 30, 3), 40 * c, np.uint8) for c in labels]
    path = str(tmp_path / "r.png")
    shown = save_retrievals(path, emb, labels, images, n_queries=4, k=2, seed=3, tile=16)
    queries = shown["queries"]
    assert queries.tolist() == pick_queries(6, 4, 3).tolist() and len(set(queries.tolist())) == 4
    png = Image.open(path).convert("RGB")
    cell = 16 + 2 * 4
    assert png.size == (3 * cell + 4, 4 * cell)
    nearest = {0: [1, 5], 1: [0, 5], 2: [3, 5], 3: [2, 5], 4: [3, 2], 5: [1, 0]}
    for row, q in enumerate(queries):
        assert shown["neighbours"][row].tolist() == nearest[q]
        # cosine of the angle between query and neighbour, by hand
        expected = [np.cos(angles[q] - angles[n]) for n in nearest[q]]
        np.testing.assert_allclose(shown["scores"][row], expected, atol=1e-6)
        assert png.getpixel((cell // 2, row * cell + cell // 2)) == (40 * labels[q],) * 3
        for j, n in enumerate(nearest[q]):
            x = (j + 1) * cell + 4
            frame = CORRECT_FRAME if labels[n] == labels[q] else WRONG_FRAME
            assert png.getpixel((x, row * cell)) == frame
            assert png.getpixel((x + cell // 2, row * cell + cell // 2)) == (40 * labels[n],) * 3


def test_save_retrievals_captions(tmp_path):
    labels = np.array([0, 0, 1, 1])
    emb = np.eye(4, 3, dtype=np.float32)[[0, 0, 1, 1]]
    images = [np.full((8, 8, 3), 200, np.uint8)] * 4
    path = str(tmp_path / "c.png")
    save_retrievals(path, emb, labels, images, n_queries=2, k=1, seed=0, tile=64,
                    class_names=["cat", "dog"])
    png = np.asarray(Image.open(path).convert("RGB"))
    cell, line = 64 + 2 * 4, CAPTION_LINE
    assert png.shape[:2] == (2 * (cell + 2 * line), 2 * cell + 4)
    band = png[cell:cell + 2 * line]  # the first row's captions: class name and score lines
    assert (band < 100).all(axis=-1).any(), "caption text is drawn in black"
    assert (png[cell + 2 * line - 1:cell + 2 * line] == 255).all(), "band ends before the next row"


# ---- the CLI -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """(workdir of a tiny untrained run, folder dataset: 12 classes x 5 images)."""
    root = tmp_path_factory.mktemp("eval")
    data_dir = make_folder_dataset(str(root / "data"), n_classes=12, per_class=5, size=36)
    workdir, model, cfg = make_workdir(str(root / "run"), seed=3)
    return workdir, data_dir, model, cfg


def flags(**kw):
    defaults = dict(workdir=None, export_dir=None, checkpoint="best", dataset=None, data_dir=None,
                    tfds_data_dir=None, train_classes=None, test_classes=None, max_images=0,
                    eval_batch_size=None)
    return types.SimpleNamespace(**{**defaults, **kw})


def test_workdir_and_export_dir_give_identical_results(run_and_data, tmp_path):
    from diva_tf.serving import export

    workdir, data_dir, model, cfg = run_and_data
    combos = evaluate.parse_combinations("0.5,1,1,1;1,1,1,1", 4)
    out = str(tmp_path / "w.json")
    target = evaluate.target_from_flags(flags(workdir=workdir, data_dir=data_dir, eval_batch_size=7))
    from_workdir = evaluate.run(target, combos, [1, 2], output_json=out, save_retrievals_n=3,
                                verbose=False)
    assert list(from_workdir) == HEADS + ["combined[0.5,1,1,1]", "combined[1,1,1,1]"]
    scores = from_workdir["combined[0.5,1,1,1]"]
    assert (scores["n_queries"], scores["n_singletons"], scores["n_clusters"]) == (30, 0, 6)
    assert 0 <= scores["recall@1"] <= scores["recall@2"] <= 1 and 0 <= scores["nmi"] <= 1
    saved = json.load(open(out))
    assert saved["results"]["intra"] == from_workdir["intra"]
    assert saved["meta"]["n_clusters"] == 6 and saved["meta"]["workdir"] == os.path.abspath(workdir)
    assert Image.open(tmp_path / "retrievals.png").size == (5 * 104 + 4, 3 * (104 + 2 * CAPTION_LINE))

    base = str(tmp_path / "models" / "diva")
    export.export_model(model, cfg, base, head_weights=(0.5, 1.0, 1.0, 1.0), dataset=cfg.dataset)
    export.export_model(model, cfg, base, head_weights=(1.0, 1.0, 1.0, 1.0),  # version 2
                        dataset=cfg.dataset)
    target = evaluate.target_from_flags(flags(export_dir=base, data_dir=data_dir))
    assert target.source["version"] == 2 and target.combinations == [(1.0, 1.0, 1.0, 1.0)]
    assert (target.cfg.crop, target.cfg.resize, target.cfg.dataset) == (32, 36, "folder")
    from_export = evaluate.run(target, combos, [1, 2], verbose=False)
    assert from_export == from_workdir
    # the library functions the CLI calls
    import diva_tf

    again = dict(data_dir=data_dir, combinations=combos, recall_k=[1, 2], verbose=False)
    assert diva_tf.evaluate_run(workdir, **again) == from_workdir
    assert diva_tf.evaluate_export(base, **again) == from_workdir


def test_all_classes_of_a_folder(run_and_data):
    """--classes=all scores every image of every class folder (12 x 5), with k-means over the 12
    classes; recall and MAP@R equal the brute-force numpy reference on the same embeddings."""
    from diva_tf import data
    from diva_tf.data import folder
    from diva_tf.data.splits import Split
    from reference_metrics import retrieval

    workdir, data_dir, model, cfg = run_and_data
    target = evaluate.target_from_flags(flags(workdir=workdir, data_dir=data_dir))
    results = evaluate.run(target, [], [1, 2], verbose=False, classes="all")
    scores = results["discriminative"]
    assert (scores["n_queries"], scores["n_clusters"]) == (60, 12)
    train, test = folder.load(target.cfg)
    paths = [p for _, files in train + test for p in files]
    labels = [c for c, (_, files) in enumerate(train + test) for _ in files]
    every = Split(paths, labels, [name for name, _ in train + test])
    images = np.concatenate([x for x, _ in data.eval_dataset(every, target.cfg)])
    emb = np.asarray(model(images, training=False)["discriminative"])
    sims = emb @ emb.T - 3 * np.eye(len(emb))  # self excluded
    top = -np.sort(-sims, axis=1)[:, :5]  # the ranks MAP@R and recall@2 read (5 per class)
    assert np.diff(top, axis=1).max() < -1e-7, "tied neighbours: the reference order is arbitrary"
    ref = retrieval(emb, every.labels, [1, 2])
    for name in ("recall@1", "recall@2", "map@r"):
        assert scores[name] == pytest.approx(ref[name], abs=1e-6)
    explicit = evaluate.target_from_flags(flags(workdir=workdir, data_dir=data_dir,
                                                test_classes=["class_00", "class_03"]))
    assert evaluate.run(explicit, [], [1], verbose=False)["discriminative"]["n_queries"] == 10
    with pytest.raises(ConfigError, match="--classes"):
        evaluate.run(target, [], [1], verbose=False, classes="train")


def test_flag_errors(run_and_data):
    workdir, data_dir, _, _ = run_and_data
    with pytest.raises(ConfigError, match="exactly one"):
        evaluate.target_from_flags(flags())
    with pytest.raises(ConfigError, match="exactly one"):
        evaluate.target_from_flags(flags(workdir=workdir, export_dir=workdir))
    with pytest.raises(ConfigError):
        evaluate.parse_combinations("0.5,1", 4)
    with pytest.raises(ConfigError):
        evaluate.parse_recall_k(["1", "x"])


def test_cli_subprocess(run_and_data, tmp_path):
    workdir, data_dir, _, _ = run_and_data
    out = str(tmp_path / "cli.json")
    proc = check(run([PYTHON, "-m", "diva_tf.evaluate", f"--workdir={workdir}",
                      f"--data_dir={data_dir}", "--eval_combinations=0.5,1,1,1", "--recall_k=1,4",
                      "--n_clusters=3", "--max_images=20", f"--output_json={out}",
                      "--save_retrievals=2", f"--retrievals_png={tmp_path / 'r.png'}"]))
    assert "combined[0.5,1,1,1]" in proc.stdout
    data = json.load(open(out))
    assert list(data["results"]["discriminative"])[:2] == ["recall@1", "recall@4"]
    assert data["meta"]["n_images"] == 20 and data["meta"]["n_clusters"] == 3
    assert not math.isnan(data["results"]["combined[0.5,1,1,1]"]["map@r"])
    assert Image.open(tmp_path / "r.png").size == (5 * 104 + 4, 2 * (104 + 2 * CAPTION_LINE))
    bad = run([PYTHON, "-m", "diva_tf.evaluate", f"--workdir={workdir}", "--recall_k=0"])
    assert bad.returncode == 2 and "recall_k" in bad.stderr
