"""In-run evaluation: one traced embedding function for the whole run, and its scores against a
numpy recomputation of the embeddings, the head combination and retrieval."""

import numpy as np
import pytest
import tensorflow as tf

import reference_metrics as refm
from diva_tf import data
from diva_tf.config import Config
from diva_tf.evaluation.in_run import Evaluator
from diva_tf.model.network import build_embedding_model
from fixtures_data import isolated_cache, make_class_tree  # noqa: F401


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_class_tree(str(tmp_path_factory.mktemp("folder")), {f"c{i}": 3 + i % 2 for i in range(8)})
    cfg = Config(backbone="tiny", backbone_weights="none", dataset="folder", data_dir=root, crop=32,
                 resize=36, embed_dim=8, eval_batch_size=5, val_classes_fraction=0.25)
    return cfg, data.load_splits(cfg)


def test_embedding_function_is_traced_once_per_run(setup):
    cfg, splits = setup
    evaluator = Evaluator(splits, cfg.diva_features, cfg, cfg, cfg.dataset)
    model = build_embedding_model(cfg, cfg.seed)
    first = evaluator(model)
    # every epoch, on test and validation splits whose last batches differ in size
    assert {len(splits.test) % 5, len(splits.val) % 5} != {0}
    second = evaluator(model)
    assert evaluator.embed_function(model).experimental_get_tracing_count() == 1
    assert first == second


def _normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_scores_match_a_numpy_recomputation(setup):
    """A fixed random projection per head as the embedder; every split's per-head and combined
    Recall@k / MAP@R recomputed in numpy (combination: normalize(concat(w_i * e_i)), algorithm.md 2.4)."""
    cfg, splits = setup
    heads = list(cfg.diva_features)
    rng = np.random.default_rng(0)
    proj = {h: rng.normal(size=(32 * 32 * 3, 8)).astype(np.float32) for h in heads}

    def embedder(x, training=False):
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        return {h: tf.math.l2_normalize(flat @ proj[h], -1) for h in heads}

    weights = (0.5, 1.0, 2.0, 1.0)
    options = cfg.replace(eval_combinations=["0.5,1,2,1"])
    evaluator = Evaluator(splits, cfg.diva_features, cfg, options, cfg.dataset)
    scores = evaluator(embedder)
    primary = "combined[0.5,1,2,1]"
    assert evaluator.primary == primary and evaluator.selection_key == f"val/{primary}/recall@1"
    for name, split in (("test", splits.test), ("val", splits.val)):
        batches = list(data.eval_dataset(split, cfg))
        images = np.concatenate([b[0].numpy() for b in batches]).reshape(-1, 32 * 32 * 3)
        labels = np.concatenate([b[1].numpy() for b in batches])
        embs = {h: _normalize(images.astype(np.float64) @ proj[h]) for h in heads}
        combined = _normalize(np.concatenate([w * embs[h] for h, w in zip(heads, weights)], axis=1))
        for emb_name, emb in (("discriminative", embs["discriminative"]), (primary, combined)):
            want = refm.retrieval(emb, labels, [1, 2])
            for metric in ("recall@1", "recall@2", "map@r"):
                assert scores[f"{name}/{emb_name}/{metric}"] == pytest.approx(want[metric], abs=1e-9)


def test_val_improved_embeds_the_test_split_only_when_selection_could_pick_the_epoch(setup, monkeypatch):
    cfg, splits = setup
    evaluator = Evaluator(splits, cfg.diva_features, cfg, cfg.replace(eval_test="val_improved"),
                          cfg.dataset)
    val_r1 = iter([0.5, 0.4, 0.6, 0.6, 0.3])  # hand-worked: improves at calls 1 and 3 only
    calls = []

    def fake_score(embed, name):
        calls.append(name)
        return {f"{name}/combined[1,1,1,1]/recall@1": next(val_r1) if name == "val" else 0.0}

    monkeypatch.setattr(evaluator, "_score", fake_score)
    model = build_embedding_model(cfg, cfg.seed)
    got = [sorted({k.split("/")[0] for k in evaluator(model, force_test=i == 4)}) for i in range(5)]
    assert got == [["test", "val"], ["val"], ["test", "val"], ["val"], ["test", "val"]]
    assert calls.count("test") == 3
    always = Evaluator(splits, cfg.diva_features, cfg, cfg, cfg.dataset)
    assert always.test_always and not evaluator.test_always


def test_validation_k_means_uses_the_validation_class_count(setup):
    """Hand-worked: validation is 1 class x 4 images. With the training-class count (4, algorithm.md 7.2's
    rule for the test split) k-means would put every image in its own cluster (NMI 0, F1 0 by the
    sklearn conventions, whatever the embedding); with k = 1 class all four share one cluster, so
    NMI = F1 = 1. The test split keeps the training-class count (3 train + 1 val classes)."""
    cfg, splits = setup
    assert (splits.val.num_classes, len(splits.val.labels)) == (1, 4)
    evaluator = Evaluator(splits, cfg.diva_features, cfg, cfg, cfg.dataset)
    scores = evaluator(build_embedding_model(cfg, cfg.seed))
    assert scores["val/discriminative/n_clusters"] == 1
    assert scores["val/discriminative/nmi"] == 1.0 and scores["val/discriminative/f1"] == 1.0
    assert scores["test/discriminative/n_clusters"] == 4
