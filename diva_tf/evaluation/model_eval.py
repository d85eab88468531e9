"""Evaluating a model on a split: embed every image through the evaluation view (resize, centre
crop) and score each head and weighted head combination (Recall@k, NMI, F1, mAP@C, MAP@R,
R-precision). The in-run `Evaluator` and the Python API use it."""

from __future__ import annotations

import tensorflow as tf

from diva_tf.data import eval_dataset
from diva_tf.data.options import DEFAULT_EVAL_BATCH, PipelineOptions
from diva_tf.evaluation.clustering import FAISS_DEFAULT_SEED
from diva_tf.evaluation.embed import embed_dataset
from diva_tf.evaluation.options import default_combinations
from diva_tf.evaluation.suite import evaluate_embeddings


def embed_function(model, crop: int):
    """`model(images, training=False)` traced once for any batch of crop x crop images."""
    spec = tf.TensorSpec([None, crop, crop, 3], tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


def evaluate_split(embed, split, heads, pipeline: PipelineOptions, batch_size: int,
                   combinations=(), recall_k=None, n_clusters: int | None = None,
                   dataset: str | None = None, seed: int = FAISS_DEFAULT_SEED,
                   verbose: bool = False) -> dict:
    """{embedding name: {metric: value}} of `embed` (images -> {head: [n, d]}) on `split`."""
    embs, labels = embed_dataset(embed, eval_dataset(split, pipeline, batch_size), verbose)
    return evaluate_embeddings(embs, labels, heads=heads, combinations=combinations,
                               recall_k=recall_k, n_clusters=n_clusters, dataset=dataset, seed=seed)


def evaluate_model(model, split, pipeline: PipelineOptions | None = None, heads=None,
                   combinations=None, recall_k=None, n_clusters: int | None = None,
                   dataset: str | None = None, batch_size: int = DEFAULT_EVAL_BATCH) -> dict:
    """Scores of a DiVA embedding model (`build_embedding_model`, `DiVATrainer.embedder`) on a
    split: {name: {metric: value}} for each head and each head-weight combination.

    heads defaults to the model's outputs in order; combinations to the dataset's published head
    weights (all 1 for an unnamed dataset) when there are several heads; n_clusters (k-means) to
    the split's class count (DiVA uses the training class count: pass it to compare).
    """
    pipeline = PipelineOptions() if pipeline is None else pipeline
    heads = list(model.output) if heads is None else list(heads)
    if combinations is None:
        combinations = default_combinations(dataset, heads)
    return evaluate_split(embed_function(model, pipeline.crop), split, heads, pipeline,
                          batch_size, combinations, recall_k, n_clusters, dataset)
