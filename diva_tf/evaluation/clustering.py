"""Clustering metrics (algorithm.md 7.2): faiss k-means on the embeddings, then NMI and pairwise F1 of the
cluster assignment against the class labels.

k-means as DiVA runs it: 20 iterations, min_points_per_centroid = 1, no subsampling
(max_points_per_centroid = 1e9), one run, each sample assigned to its nearest centroid; the seed
defaults to faiss's own default (1234), which is what DiVA used. DiVA sets n_clusters to the number
of *training* classes (11,318 for SOP); the caller passes it.

Both scores are computed from the sparse contingency table (non-zero cluster x class cells), in
O(N log N) time and O(number of non-zero cells) memory, never over the N^2 pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from diva_tf.evaluation.knn import as_float32
from diva_tf.evaluation.timing import timed

FAISS_DEFAULT_SEED = 1234
KMEANS_ITERATIONS = 20


def kmeans_assign(emb, n_clusters: int, seed: int = FAISS_DEFAULT_SEED,
                  niter: int = KMEANS_ITERATIONS, gpu: bool | None = None) -> np.ndarray:
    """int64 [n]: nearest k-means centroid of every row (n_clusters capped at n)."""
    import faiss

    x = as_float32(emb)
    k = min(int(n_clusters), len(x))
    if gpu is None:
        gpu = faiss.get_num_gpus() > 0
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed), min_points_per_centroid=1,
                          max_points_per_centroid=10**9, gpu=bool(gpu), verbose=False)
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    return assign.reshape(-1).astype(np.int64)


class Contingency(NamedTuple):
    """Non-zero cells of the cluster x class table, with each cell's row and column."""

    counts: np.ndarray
    cell_cluster: np.ndarray
    cell_class: np.ndarray
    cluster_sizes: np.ndarray
    class_sizes: np.ndarray


def contingency(pred, true) -> Contingency:
    """Sparse contingency table of a cluster assignment against class labels."""
    _, p = np.unique(np.asarray(pred).reshape(-1), return_inverse=True)
    _, t = np.unique(np.asarray(true).reshape(-1), return_inverse=True)
    if len(p) != len(t):
        raise ValueError(f"{len(p)} cluster assignments for {len(t)} labels")
    n_classes = int(t.max(initial=0)) + 1
    cells, counts = np.unique(p.astype(np.int64) * n_classes + t, return_counts=True)
    rows, cols = np.divmod(cells, n_classes)
    return Contingency(counts, rows, cols, np.bincount(p), np.bincount(t))


def _entropy(sizes: np.ndarray) -> float:
    p = sizes / sizes.sum()
    return float(-(p * np.log(p)).sum())


def nmi(pred, true) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (sklearn >= 0.22 default,
    with its conventions: 1.0 when both labelings are one group, 0.0 when MI is 0)."""
    c = contingency(pred, true)
    n_clusters, n_classes = len(c.cluster_sizes), len(c.class_sizes)
    if n_clusters == n_classes == 1:
        return 1.0
    if n_clusters == 1 or n_classes == 1:
        return 0.0
    n = float(c.counts.sum())
    outer = c.cluster_sizes[c.cell_cluster].astype(np.float64) * c.class_sizes[c.cell_class]
    terms = c.counts / n * (np.log(c.counts) + np.log(n) - np.log(outer))
    terms = np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms)
    mi = max(float(terms.sum()), 0.0)
    if mi == 0:
        return 0.0
    return mi / (0.5 * (_entropy(c.cluster_sizes) + _entropy(c.class_sizes)))


def _pairs(sizes: np.ndarray) -> float:
    sizes = sizes.astype(np.float64)
    return float((sizes * (sizes - 1) / 2).sum())


def pairwise_f1(pred, true) -> float:
    """F1 over item pairs: a pair is predicted positive if both share a cluster, positive if both
    share a class; F1 = 2PR / (P + R) (0 when no pair is both)."""
    c = contingency(pred, true)
    true_positive = _pairs(c.counts)
    if true_positive == 0:
        return 0.0
    precision = true_positive / _pairs(c.cluster_sizes)
    recall = true_positive / _pairs(c.class_sizes)
    return 2 * precision * recall / (precision + recall)


def clustering_metrics(emb, labels, n_clusters: int, seed: int = FAISS_DEFAULT_SEED,
                       gpu: bool | None = None, timings: dict | None = None) -> dict:
    """{"nmi", "f1", "n_clusters"} of one k-means run; `timings` accumulates seconds per step."""
    with timed(timings, "kmeans"):
        pred = kmeans_assign(emb, n_clusters, seed, gpu=gpu)
    with timed(timings, "nmi"):
        score_nmi = nmi(pred, labels)
    with timed(timings, "f1"):
        score_f1 = pairwise_f1(pred, labels)
    return {"nmi": score_nmi, "f1": score_f1, "n_clusters": min(int(n_clusters), len(pred))}
