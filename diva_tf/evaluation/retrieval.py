"""Retrieval metrics from exact nearest neighbours: Recall@k, mAP@C, MAP@R and R-precision.

For a query of class c let R be the number of *other* items of class c in the gallery (in
self-retrieval, the test set minus the query; with a separate gallery, the gallery items of c).
rel_i = 1 if the i-th nearest neighbour (self match dropped) is of class c, P@i = (1/i) sum_{t<=i} rel_t.

- Recall@k (DiVA `e_recall`): 1 if any of the k nearest neighbours has class c.
- mAP@C (DiVA/RevDML `mAP_c`): with n_c = R + 1 the class size *including the query*,
  AP = (1/n_c) sum_{i <= n_c} rel_i * P@i. Capped at (n_c - 1)/n_c: the query can never be
  retrieved, yet counts in depth and denominator.
- MAP@R (pytorch-metric-learning, Musgrave et al. 2020): AP = (1/R) sum_{i <= R} rel_i * P@i.
- R-precision (pytorch-metric-learning): (1/R) sum_{i <= R} rel_i.
So mAP@C uses depth and denominator R + 1 where MAP@R uses R: this is the off-by-one between
the two (algorithm.md 7.2). With a separate gallery no query is in the gallery and both use R (n_c = R):
mAP@C equals MAP@R there.

All four are averaged over queries (sample-averaged, as DiVA and pytorch-metric-learning do).
Queries with R = 0 (singleton classes; with a gallery, classes absent from it) have no correct
answer: they are left out of every average and counted in `n_singletons` (`n_queries` counts the
averaged ones). pytorch-metric-learning drops such "lone" queries likewise; DiVA's Recall@k
counts them as misses, i.e. its value is recall@k * n_queries / (n_queries + n_singletons).
"""

from __future__ import annotations

import numpy as np

from diva_tf.evaluation.knn import iter_neighbours
from diva_tf.evaluation.timing import timed


def relevant_counts(query_labels, gallery_labels, self_search: bool) -> np.ndarray:
    """R per query: gallery items sharing the query's class, the query itself excluded."""
    classes, counts = np.unique(gallery_labels, return_counts=True)
    pos = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    r = np.where(classes[pos] == query_labels, counts[pos], 0).astype(np.int64)
    return r - 1 if self_search else r


def precision_sums(rel: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, over the first depth[row] columns: (sum of rel_i * P@i, sum of rel_i)."""
    positions = np.arange(1, rel.shape[1] + 1)
    r = rel & (positions[None, :] <= depth[:, None])
    return (r * np.cumsum(r, axis=1) / positions).sum(axis=1), r.sum(axis=1)


def recall_hits(rel: np.ndarray, recall_k) -> np.ndarray:
    """bool [n, len(recall_k)]: a relevant item among the first k columns."""
    return np.stack([rel[:, :k].any(axis=1) for k in recall_k], axis=1)


def query_scores(rel: np.ndarray, n_relevant: np.ndarray, recall_k, self_search: bool) -> dict:
    """Per-query scores of one chunk; rows with n_relevant = 0 give NaN-free zeros."""
    n_c = n_relevant + 1 if self_search else n_relevant
    ap_c, _ = precision_sums(rel, n_c)
    ap_r, hits_r = precision_sums(rel, n_relevant)
    safe_c, safe_r = np.maximum(n_c, 1), np.maximum(n_relevant, 1)
    return {"recall": recall_hits(rel, recall_k), "map@c": ap_c / safe_c,
            "map@r": ap_r / safe_r, "r_precision": hits_r / safe_r}


def retrieval_metrics(query, query_labels, gallery=None, gallery_labels=None,
                      recall_k=(1, 2, 4, 8), chunk_size: int | None = None,
                      gpu: bool | None = None, timings: dict | None = None) -> dict:
    """Recall@k, mAP@C, MAP@R, R-precision (module docstring), streaming over query chunks.

    Without a gallery the queries are the gallery and their self match is dropped. `timings`,
    when given, accumulates the seconds spent in "knn" search and in "scoring".
    """
    query_labels = np.asarray(query_labels).reshape(-1)
    self_search = gallery is None
    gallery_labels = query_labels if self_search else np.asarray(gallery_labels).reshape(-1)
    if len(query_labels) == 0 or len(gallery_labels) == 0:
        raise ValueError("retrieval metrics need at least one query and one gallery item")
    recall_k = sorted({int(k) for k in recall_k})
    if not recall_k or recall_k[0] < 1:
        raise ValueError(f"recall_k must be positive integers, got {recall_k}")
    n_relevant = relevant_counts(query_labels, gallery_labels, self_search)
    n_c = n_relevant + 1 if self_search else n_relevant
    depth = max(recall_k[-1], int(n_c.max(initial=1)))
    scores = {}
    neighbours = iter_neighbours(query, depth, gallery, chunk_size, gpu)
    while True:
        with timed(timings, "knn"):
            chunk = next(neighbours, None)
        if chunk is None:
            break
        with timed(timings, "scoring"):
            start, ids = chunk
            rows = slice(start, start + len(ids))
            rel = gallery_labels[ids] == query_labels[rows, None]
            for name, value in query_scores(rel, n_relevant[rows], recall_k, self_search).items():
                scores.setdefault(name, []).append(value)
    return summarize(scores, n_relevant > 0, recall_k)


def summarize(scores: dict, valid: np.ndarray, recall_k) -> dict:
    """Averages over the queries with at least one relevant item, plus the counts."""
    n = int(valid.sum())
    mean = (lambda x: float(np.mean(x[valid]))) if n else (lambda x: float("nan"))
    per_query = {name: np.concatenate(parts) for name, parts in scores.items()}
    out = {f"recall@{k}": mean(per_query["recall"][:, i]) for i, k in enumerate(recall_k)}
    out.update({name: mean(per_query[name]) for name in ("map@c", "map@r", "r_precision")})
    out.update({"n_queries": n, "n_singletons": int(len(valid) - n)})
    return out
