"""Time and memory of the evaluation metric suite at Stanford Online Products scale.

    python benchmarks/eval_scale.py                       # 60,502 x 512, 11,316 classes
    python benchmarks/eval_scale.py --n 6000 --dim 128    # quick try (classes scale with n)
    python benchmarks/eval_scale.py --embed tiny:64       # + embedding 60,502 images first

Generates random-but-clustered unit embeddings (class centres plus Gaussian noise, SOP-like class
sizes: at least 2, mean ~5.3), then runs what evaluation runs on SOP: exact k-NN at depth 1000
shared by Recall@{1,10,100,1000}, mAP@C, MAP@R and R-precision; faiss k-means with 11,318
clusters (the training class count) for NMI and F1. Prints seconds per step, the scores, and
peak memory: process RSS (ru_maxrss, includes faiss's C++ buffers) and the tracemalloc peak of
Python/numpy allocations during the metrics.

With --embed name:size, n synthetic images first go through the evaluation embedding path
(`embed_dataset` on a four-head model, 4 x dim/4 = dim-d combined embedding), timed and measured
the same way; the metrics still run on the clustered vectors, so the scores stay meaningful.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diva_tf.evaluation import clustering_metrics, retrieval_metrics  # noqa: E402

SOP_TEST = {"n": 60502, "classes": 11316, "clusters": 11318}


def class_sizes(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """n items over n_classes classes, each with at least 2 (SOP's minimum)."""
    if n < 2 * n_classes:
        raise SystemExit(f"--n {n} is too small for {n_classes} classes of at least 2 items")
    return 2 + np.bincount(rng.integers(0, n_classes, n - 2 * n_classes), minlength=n_classes)


def clustered_embeddings(sizes: np.ndarray, dim: int, noise: float, rng: np.random.Generator):
    """(unit-norm float32 [n, dim], labels): class centre + N(0, noise^2 / dim) per item."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.standard_normal((len(sizes), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = centres[labels]
    emb += rng.standard_normal(emb.shape, dtype=np.float32) * np.float32(noise / np.sqrt(dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, labels


def embed_images(n: int, spec: str, dim: int, batch_size: int) -> tuple[float, tuple]:
    """Seconds to embed n synthetic images with the evaluation path, and the combined shape."""
    import tensorflow as tf

    from diva_tf.config import Config
    from diva_tf.evaluation import embed_dataset
    from diva_tf.model.network import build_embedding_model

    name, size = spec.split(":")
    size = int(size)
    cfg = Config(backbone=name, backbone_weights="none", embed_dim=dim // 4, crop=size)
    model = build_embedding_model(cfg, cfg.seed)
    embed = tf.function(lambda x: model(x, training=False),
                        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

    def image(i):
        return tf.random.stateless_uniform([size, size, 3], tf.stack([i, 0]), 0.0, 255.0), i % 7

    ds = tf.data.Dataset.range(n).map(image, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    start = time.perf_counter()
    embs, _ = embed_dataset(embed, ds, verbose=False)
    seconds = time.perf_counter() - start
    combined = np.concatenate([embs[h] for h in cfg.diva_features], axis=1)
    return seconds, combined.shape


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=SOP_TEST["n"])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=0, help="default: SOP's n / classes ratio")
    parser.add_argument("--clusters", type=int, default=0, help="default: classes + 2, as SOP")
    parser.add_argument("--recall_k", default="1,10,100,1000")
    parser.add_argument("--noise", type=float, default=2.2, help="noise norm relative to centre")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed", default="", help="name:size: embed n synthetic images first")
    parser.add_argument("--batch_size", type=int, default=256, help="embedding batch size")
    args = parser.parse_args()

    if args.embed:
        seconds, shape = embed_images(args.n, args.embed, args.dim, args.batch_size)
        print(f"embedding: {shape[0]} images with {args.embed} -> {shape[0]} x {shape[1]} in "
              f"{seconds:.1f} s ({shape[0] / seconds:.0f} images/s), peak RSS {peak_rss_mb():.0f} MB")

    import faiss

    faiss.omp_set_num_threads(args.threads)
    classes = args.classes or round(args.n * SOP_TEST["classes"] / SOP_TEST["n"])
    clusters = args.clusters or classes + SOP_TEST["clusters"] - SOP_TEST["classes"]
    recall_k = [int(k) for k in args.recall_k.split(",")]
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    emb, labels = clustered_embeddings(class_sizes(args.n, classes, rng), args.dim, args.noise, rng)
    print(f"data: {emb.shape[0]} x {emb.shape[1]} float32, {classes} classes (sizes "
          f"{np.bincount(labels).min()}-{np.bincount(labels).max()}), {clusters} k-means clusters, "
          f"{args.threads} threads; generated in {time.perf_counter() - t0:.1f} s, "
          f"RSS {peak_rss_mb():.0f} MB")

    timings = {}
    tracemalloc.start()
    start = time.perf_counter()
    scores = retrieval_metrics(emb, labels, recall_k=recall_k, timings=timings)
    scores.update(clustering_metrics(emb, labels, clusters, timings=timings))
    total = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    steps = {"knn": f"exact k-NN search, depth {max(recall_k)} (shared by recall and mAP)",
             "scoring": "Recall@k + mAP@C + MAP@R + R-precision from the neighbours",
             "kmeans": f"faiss k-means, {clusters} clusters, 20 iterations + assignment",
             "nmi": "NMI (sparse contingency)", "f1": "pairwise F1 (sparse contingency)"}
    for key, what in steps.items():
        print(f"{timings.get(key, 0.0):9.2f} s  {what}")
    print(f"{total:9.2f} s  total")
    print("scores: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in scores.items()))
    print(f"peak RSS {peak_rss_mb():.0f} MB (embeddings {emb.nbytes / 2**20:.0f} MB); "
          f"tracemalloc peak during metrics {traced_peak / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
