"""The full metric suite on one embedding, and on every head and weighted head combination."""

from __future__ import annotations

import numpy as np
from absl import logging

from diva_tf.evaluation.clustering import FAISS_DEFAULT_SEED, clustering_metrics
from diva_tf.evaluation.combine import combination_name, combine_heads
from diva_tf.evaluation.retrieval import retrieval_metrics

DEFAULT_RECALL_K = (1, 2, 4, 8)
RECALL_K_BY_DATASET = {"sop": (1, 10, 100, 1000)}


def default_recall_k(dataset: str | None = None) -> tuple:
    """Recall@k cut-offs: 1, 10, 100, 1000 for SOP, 1, 2, 4, 8 otherwise."""
    return RECALL_K_BY_DATASET.get(dataset, DEFAULT_RECALL_K)


def _checked(emb, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    emb, labels = np.asarray(emb, np.float32), np.asarray(labels).reshape(-1)
    if emb.ndim != 2 or len(emb) != len(labels):
        raise ValueError(f"{what}: expected [n, d] embeddings for {len(labels)} labels, "
                         f"got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError(f"{what}: embeddings contain NaN or inf")
    return emb, labels


def evaluate_embedding(emb, labels, recall_k=None, n_clusters: int | None = None,
                       seed: int = FAISS_DEFAULT_SEED, gallery=None, gallery_labels=None,
                       dataset: str | None = None, chunk_size: int | None = None,
                       gpu: bool | None = None, timings: dict | None = None) -> dict:
    """Recall@k, NMI, F1, mAP@C, MAP@R, R-precision and counts of one unit-norm embedding.

    With `gallery`, `emb` are queries searched in the gallery (no self match) and k-means runs on
    queries and gallery together. n_clusters defaults to the number of distinct labels; DiVA uses
    the number of training classes, which only the caller knows.
    """
    emb, labels = _checked(emb, labels, "queries")
    clustered, clustered_labels = emb, labels
    if gallery is not None:
        gallery, gallery_labels = _checked(gallery, gallery_labels, "gallery")
        clustered = np.concatenate([emb, gallery])
        clustered_labels = np.concatenate([labels, gallery_labels])
    scores = retrieval_metrics(emb, labels, gallery, gallery_labels,
                               recall_k or default_recall_k(dataset), chunk_size, gpu, timings)
    n_clusters = n_clusters or len(np.unique(clustered_labels))
    clusters = clustering_metrics(clustered, clustered_labels, n_clusters, seed, gpu, timings)
    ordered = {k: v for k, v in scores.items() if k.startswith("recall@")}
    ordered.update({k: clusters[k] for k in ("nmi", "f1")})
    ordered.update({k: v for k, v in scores.items() if k not in ordered})
    ordered["n_clusters"] = clusters["n_clusters"]
    return ordered


def named_embeddings(embs: dict, heads, combinations=()) -> dict:
    """{name: embedding}: each head alone, then each weighted combination (several heads only)."""
    heads = list(heads)
    missing = [h for h in heads if h not in embs]
    if missing:
        raise KeyError(f"no embeddings for head(s) {missing}; have {sorted(embs)}")
    named = {h: np.asarray(embs[h], np.float32) for h in heads}
    if len(heads) > 1:
        for weights in combinations:
            named.setdefault(combination_name(heads, weights), combine_heads(embs, heads, weights))
    return named


def evaluate_embeddings(embs: dict, labels, heads, combinations=(), recall_k=None,
                        n_clusters: int | None = None, dataset: str | None = None,
                        seed: int = FAISS_DEFAULT_SEED, gallery_embs: dict | None = None,
                        gallery_labels=None, chunk_size: int | None = None,
                        gpu: bool | None = None) -> dict:
    """{name: metrics} for every head and weighted combination (`named_embeddings`), e.g.
    {"discriminative": {"recall@1": ...}, "combined[0.5,1,1,1]": {...}}."""
    queries = named_embeddings(embs, heads, combinations)
    galleries = (named_embeddings(gallery_embs, heads, combinations) if gallery_embs is not None
                 else dict.fromkeys(queries))
    results = {}
    for name, emb in queries.items():
        results[name] = evaluate_embedding(emb, labels, recall_k, n_clusters, seed, galleries[name],
                                           gallery_labels, dataset, chunk_size, gpu)
        logging.debug("%s: %s", name, " ".join(f"{k}={v:.4f}" for k, v in results[name].items()
                                               if isinstance(v, float)))
    return results
