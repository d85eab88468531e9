"""Brute-force numpy references for the evaluation metrics: full similarity matrices, per-query
Python loops, O(N^2) pair counting. Slow and obvious on purpose; tests compare
diva_tf.evaluation against these on small data."""

from __future__ import annotations

import numpy as np


def ranking(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """[n_query, n_gallery] gallery ids by decreasing inner product, ties by increasing id."""
    sims = query.astype(np.float32) @ gallery.astype(np.float32).T
    return np.array([sorted(range(len(gallery)), key=lambda j: (-row[j], j)) for row in sims])


def neighbours(query, k, gallery=None) -> list[list[int]]:
    """k nearest gallery ids per query. Without a gallery: the query set itself, with the query's
    own id removed from the k+1 nearest if present, else the (k+1)-th removed."""
    if gallery is not None:
        return [list(r[:k]) for r in ranking(query, gallery)]
    out = []
    for i, row in enumerate(ranking(query, query)):
        top = list(row[:k + 1])
        top.remove(i) if i in top else top.pop()
        out.append(top)
    return out


def retrieval(query, labels, recall_k, gallery=None, gallery_labels=None) -> dict:
    """Recall@k, mAP@C, MAP@R, R-precision averaged over queries with >= 1 relevant item."""
    self_search = gallery is None
    g_labels = labels if self_search else gallery_labels
    depth = max(max(recall_k), max(int(np.sum(g_labels == y)) + self_search for y in labels))
    nn = neighbours(query, depth, gallery)
    per = {f"recall@{k}": [] for k in recall_k}
    per.update({"map@c": [], "map@r": [], "r_precision": []})
    singletons = 0
    for i, y in enumerate(labels):
        r = int(np.sum(g_labels == y)) - (1 if self_search else 0)
        if r == 0:
            singletons += 1
            continue
        rel = [int(g_labels[j] == y) for j in nn[i]]
        for k in recall_k:
            per[f"recall@{k}"].append(float(any(rel[:k])))
        n_c = r + 1 if self_search else r

        def average_precision(depth):
            total, hits = 0.0, 0
            for pos in range(1, depth + 1):
                if pos <= len(rel) and rel[pos - 1]:
                    hits += 1
                    total += hits / pos
            return total

        per["map@c"].append(average_precision(n_c) / n_c)
        per["map@r"].append(average_precision(r) / r)
        per["r_precision"].append(sum(rel[:r]) / r)
    out = {name: float(np.mean(v)) if v else float("nan") for name, v in per.items()}
    out.update({"n_queries": len(labels) - singletons, "n_singletons": singletons})
    return out


def nmi(pred, true) -> float:
    """2 I(U; V) / (H(U) + H(V)) from the dense contingency matrix."""
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1))
    np.add.at(table, (p, t), 1)
    joint = table / table.sum()
    pu, pv = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = np.sum(joint[nz] * np.log(joint[nz] / np.outer(pu, pv)[nz]))
    h = lambda q: -np.sum(q[q > 0] * np.log(q[q > 0]))  # noqa: E731
    return float(2 * mi / (h(pu) + h(pv)))


def pairwise_f1(pred, true) -> float:
    """F1 by enumerating all unordered pairs."""
    pred, true = np.asarray(pred), np.asarray(true)
    iu = np.triu_indices(len(pred), 1)
    same_cluster = (pred[:, None] == pred[None, :])[iu]
    same_class = (true[:, None] == true[None, :])[iu]
    tp = np.sum(same_cluster & same_class)
    precision, recall = tp / same_cluster.sum(), tp / same_class.sum()
    return float(2 * precision * recall / (precision + recall))


def grid_embeddings(n: int, n_classes: int, dim: int = 8, seed: int = 0):
    """(unit-norm float32 [n, dim], labels) whose inner products are exact in float32: every vector
    has four entries of +-0.5, so similarities are multiples of 1/4 whatever the summation order,
    faiss and numpy agree bit for bit, and ties (including exact duplicates) are everywhere.
    Items are their class prototype (a duplicate), one sign flip of it, or a random vector."""
    rng = np.random.default_rng(seed)

    def random_vector():
        v = np.zeros(dim, np.float32)
        v[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return v

    prototypes = [random_vector() for _ in range(n_classes)]
    labels = rng.integers(0, n_classes, n)
    emb = np.empty((n, dim), np.float32)
    for i, y in enumerate(labels):
        kind = rng.integers(3)
        emb[i] = random_vector() if kind == 2 else prototypes[y]
        if kind == 1:
            flip = rng.choice(np.flatnonzero(emb[i]))
            emb[i, flip] *= -1
    return emb, labels
