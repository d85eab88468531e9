"""Metrics of diva_tf.evaluation against hand-worked values and brute-force numpy references."""

import math

import numpy as np
import pytest

import reference_metrics as ref
from diva_tf.evaluation import (clustering_metrics, combination_name, combine_heads, evaluate_embedding,
                                evaluate_embeddings, kmeans_assign, nmi, pairwise_f1, retrieval_metrics)
from diva_tf.evaluation.clustering import contingency


def on_circle(degrees) -> np.ndarray:
    a = np.radians(np.asarray(degrees, np.float64))
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


# Hand-worked example. Five unit vectors at 0, 20, 30, 50, 90 degrees, classes A B A B A.
# Nearest neighbours (self dropped) and their relevance:
#   q0 (A, 0):  1B 2A 3B 4A -> 0 1 0 1        q3 (B, 50): 2A 1B 4A 0A -> 0 1 0 0
#   q1 (B, 20): 2A 0A 3B 4A -> 0 0 1 0        q4 (A, 90): 3B 2A 1B 0A -> 0 1 0 1
#   q2 (A, 30): 1B 3B 0A 4A -> 0 0 1 1
# Recall@1 = 0; Recall@2 = 3/5 (q0, q3, q4); Recall@3 = Recall@4 = 1.
# MAP@R (A: R = 2, B: R = 1): q0 = (1/2)/2 = 1/4, q4 = 1/4, others 0 -> (1/2)/5 = 0.1.
# R-precision: q0 = q4 = 1/2, others 0 -> 0.2.
# mAP@C (A: n_c = 3, B: n_c = 2): q0 = (1/2)/3 = 1/6, q1 = 0, q2 = (1/3)/3 = 1/9, q3 = (1/2)/2
# = 1/4, q4 = 1/6 -> (25/36)/5 = 5/36.
HAND_EMB = on_circle([0, 20, 30, 50, 90])
HAND_LABELS = np.array([0, 1, 0, 1, 0])
HAND_EXPECTED = {"recall@1": 0.0, "recall@2": 0.6, "recall@3": 1.0, "recall@4": 1.0,
                 "map@c": 5 / 36, "map@r": 0.1, "r_precision": 0.2, "n_queries": 5, "n_singletons": 0}


def assert_scores(actual: dict, expected: dict):
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, abs=1e-12), key


def test_hand_worked_example():
    scores = retrieval_metrics(HAND_EMB, HAND_LABELS, recall_k=(1, 2, 3, 4))
    assert_scores(scores, HAND_EXPECTED)
    assert_scores(scores, ref.retrieval(HAND_EMB, HAND_LABELS, (1, 2, 3, 4)))


def test_recall_k_beyond_the_set_is_clamped():
    assert retrieval_metrics(HAND_EMB, HAND_LABELS, recall_k=(8,))["recall@8"] == 1.0


def test_singleton_is_excluded_and_counted():
    # a sixth point of a new class at 225 degrees is farther from every point than any other one,
    # so the five rankings keep their first four places: every average is unchanged
    emb = np.vstack([HAND_EMB, on_circle([225])])
    scores = retrieval_metrics(emb, np.append(HAND_LABELS, 2), recall_k=(1, 2, 3, 4))
    assert_scores(scores, {**HAND_EXPECTED, "n_singletons": 1})
    # DiVA's Recall@k counts singletons as misses: recall * n_queries / (n_queries + n_singletons)
    assert scores["recall@2"] * 5 / 6 == pytest.approx(0.5)


def test_only_singletons_give_nan():
    scores = retrieval_metrics(HAND_EMB, np.arange(5), recall_k=(1,))
    assert math.isnan(scores["recall@1"]) and math.isnan(scores["map@r"])
    assert (scores["n_queries"], scores["n_singletons"]) == (0, 5)


@pytest.mark.parametrize("seed,recall_k,chunk", [(0, (1, 2, 4, 8), None), (1, (1, 10, 100), 17),
                                                 (2, (3,), 1)])
def test_retrieval_matches_brute_force_with_ties_and_singletons(seed, recall_k, chunk):
    emb, labels = ref.grid_embeddings(150, 40, seed=seed)
    labels[:3] = [100, 101, 102]  # singleton classes
    expected = ref.retrieval(emb, labels, recall_k)
    assert expected["n_singletons"] >= 3
    assert_scores(retrieval_metrics(emb, labels, recall_k=recall_k, chunk_size=chunk), expected)


def test_query_gallery_matches_brute_force():
    emb, labels = ref.grid_embeddings(200, 30, seed=4)
    query, q_labels = emb[:60], labels[:60].copy()
    gallery, g_labels = emb[60:], labels[60:]
    q_labels[0] = 999  # a class absent from the gallery: excluded, counted
    expected = ref.retrieval(query, q_labels, (1, 2, 4), gallery, g_labels)
    scores = retrieval_metrics(query, q_labels, gallery, g_labels, recall_k=(1, 2, 4), chunk_size=16)
    assert_scores(scores, expected)
    assert scores["n_singletons"] >= 1
    assert scores["map@c"] == scores["map@r"]  # no query in the gallery: n_c = R


def test_map_at_c_is_capped_below_map_at_r_on_perfect_retrieval():
    # three tight classes of sizes 2, 3, 4: perfect retrieval
    emb = on_circle([0, 1, 120, 121, 122, 240, 241, 242, 243])
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    scores = retrieval_metrics(emb, labels, recall_k=(1,))
    assert scores["map@r"] == 1.0 and scores["r_precision"] == 1.0 and scores["recall@1"] == 1.0
    assert scores["map@c"] == pytest.approx((2 * 1 / 2 + 3 * 2 / 3 + 4 * 3 / 4) / 9)


# ---- clustering --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_nmi_and_f1_match_direct_formulas(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 7, 120) * 3 + 5  # non-contiguous ids
    pred = np.where(rng.random(120) < 0.6, true, rng.integers(0, 9, 120))
    assert nmi(pred, true) == pytest.approx(ref.nmi(pred, true), rel=1e-12)
    assert pairwise_f1(pred, true) == pytest.approx(ref.pairwise_f1(pred, true), rel=1e-12)


def test_nmi_matches_sklearn_including_edge_cases():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    cases = [(rng.integers(0, 5, 80), rng.integers(0, 6, 80)),
             (np.zeros(10, int), np.zeros(10, int)),          # one group each: 1.0
             (np.zeros(10, int), np.arange(10) % 3),         # one cluster: 0.0
             (np.arange(10), np.arange(10)),                  # identical: 1.0
             (np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))]  # independent: 0.0
    for pred, true in cases:
        assert nmi(pred, true) == pytest.approx(
            sklearn_metrics.normalized_mutual_info_score(true, pred), abs=1e-12)


def test_contingency_is_sparse_and_complete():
    c = contingency([5, 5, 7, 7, 7], [1, 2, 1, 1, 9])
    cells = sorted(zip(c.cell_cluster.tolist(), c.cell_class.tolist(), c.counts.tolist()))
    assert cells == [(0, 0, 1), (0, 1, 1), (1, 0, 2), (1, 2, 1)]
    assert c.cluster_sizes.tolist() == [2, 3] and c.class_sizes.tolist() == [3, 1, 1]


def test_f1_edge_cases():
    assert pairwise_f1([0, 1, 2], [0, 0, 1]) == 0.0  # no pair shares a cluster
    assert pairwise_f1([0, 0, 1, 1], [3, 3, 4, 4]) == 1.0


def test_kmeans_is_deterministic_and_finds_separated_classes():
    rng = np.random.default_rng(0)
    centres = np.eye(6, dtype=np.float32)
    labels = np.repeat(np.arange(6), 20)
    emb = centres[labels] + 0.05 * rng.normal(size=(120, 6)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    first = kmeans_assign(emb, 6, seed=7)
    np.testing.assert_array_equal(first, kmeans_assign(emb, 6, seed=7))
    assert nmi(first, labels) > 0.9
    scores = clustering_metrics(emb, labels, 500)
    assert scores["n_clusters"] == 120  # capped at the number of points


# ---- suite and head combination ----------------------------------------------------------------
def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_combine_heads_matches_numpy():
    rng = np.random.default_rng(0)
    embs = {h: unit(rng.normal(size=(10, 4))) for h in ("a", "b", "c")}
    weights = (0.5, 2.0, 1.0)
    raw = np.concatenate([w * embs[h].astype(np.float64) for h, w in zip("abc", weights)], 1)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    out = combine_heads(embs, ["a", "b", "c"], weights)
    assert out.dtype == np.float32 and out.shape == (10, 12)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # squared distances are the w^2-weighted per-head squared distances (algorithm.md 2.4)
    d = lambda x: ((x[0] - x[1]) ** 2).sum()  # noqa: E731
    per_head = sum(w * w * d(embs[h]) for h, w in zip("abc", weights)) / sum(w * w for w in weights)
    assert d(out) == pytest.approx(per_head, rel=1e-5)
    with pytest.raises(ValueError):
        combine_heads(embs, ["a", "b"], (1.0,))


def test_combine_heads_tf_matches_numpy():
    tf = pytest.importorskip("tensorflow")
    from diva_tf.evaluation import combine_heads_tf

    rng = np.random.default_rng(1)
    embs = {h: unit(rng.normal(size=(6, 5))) for h in ("a", "b")}
    out = combine_heads_tf({h: tf.constant(v) for h, v in embs.items()}, ["a", "b"], (0.5, 1.0))
    np.testing.assert_allclose(out.numpy(), combine_heads(embs, ["a", "b"], (0.5, 1.0)), atol=1e-6)


def test_combination_names():
    assert combination_name(["d", "s", "h", "i"], (0.5, 1, 1, 1)) == "combined[0.5,1,1,1]"
    assert combination_name(["d", "s"], (0.75, 1.25)) == "combined[0.75,1.25]"
    assert combination_name(["d"], (1.0,)) == "d"


def test_evaluate_embeddings_names_and_metrics():
    emb, labels = ref.grid_embeddings(120, 15, seed=6)
    other, _ = ref.grid_embeddings(120, 15, seed=7)
    embs = {"discriminative": emb, "selfsimilarity": other, "embedding": emb}
    combos = [(0.5, 1.0), (1.0, 1.0), (0.5, 1.0)]
    results = evaluate_embeddings(embs, labels, ["discriminative", "selfsimilarity"], combos,
                                  recall_k=(1, 2), n_clusters=10, seed=3)
    assert list(results) == ["discriminative", "selfsimilarity", "combined[0.5,1]", "combined[1,1]"]
    assert list(results["discriminative"]) == [
        "recall@1", "recall@2", "nmi", "f1", "map@c", "map@r", "r_precision", "n_queries",
        "n_singletons", "n_clusters"]
    assert results["discriminative"] == evaluate_embedding(emb, labels, (1, 2), 10, seed=3)
    combined = combine_heads(embs, ["discriminative", "selfsimilarity"], (1.0, 1.0))
    assert results["combined[1,1]"] == evaluate_embedding(combined, labels, (1, 2), 10, seed=3)
    # one head: no combinations; SOP default cut-offs
    single = evaluate_embeddings(embs, labels, ["discriminative"], combos, dataset="sop")
    assert list(single) == ["discriminative"] and "recall@1000" in single["discriminative"]


def test_evaluate_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        evaluate_embedding(np.full((4, 2), np.nan, np.float32), np.zeros(4))
    with pytest.raises(ValueError, match="labels"):
        evaluate_embedding(np.ones((4, 2), np.float32), np.zeros(3))


def test_evaluate_embedding_with_gallery_clusters_both_sets():
    emb, labels = ref.grid_embeddings(100, 10, seed=8)
    scores = evaluate_embedding(emb[:40], labels[:40], (1, 2), 10, gallery=emb[40:],
                                gallery_labels=labels[40:])
    assert_scores(scores, retrieval_metrics(emb[:40], labels[:40], emb[40:], labels[40:], (1, 2)))
    assert_scores(scores, clustering_metrics(emb, labels, 10))
    gallery = {"a": emb[40:], "b": emb[40:]}
    both = evaluate_embeddings({"a": emb[:40], "b": emb[:40]}, labels[:40], ["a", "b"], [(1, 1)],
                               (1, 2), 10, gallery_embs=gallery, gallery_labels=labels[40:])
    assert both["a"] == scores and list(both) == ["a", "b", "combined[1,1]"]
