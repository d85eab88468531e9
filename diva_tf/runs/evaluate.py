"""Evaluating a training run's weights or an exported SavedModel on the test split of its dataset
(algorithm.md 7), or on every class of it (`classes="all"`, e.g. a user's own folder): every head alone and
every weighted head combination, with Recall@k, NMI, F1, mAP@C, MAP@R and R-precision.
`python -m diva_tf.evaluate` parses its flags and calls this.

The model is either a training run's weights (`diva_tf.runs.run_folder.load_model`) or an exported
SavedModel (its `serve_images` signature; a model base path resolves to its highest version).
Both are evaluated by the same code: the per-head outputs are embedded, and combinations are
formed here with `combine_heads` (the SavedModel's own "embedding" output is not used), so the same
weights give the same numbers either way. k-means uses a fixed seed (faiss's default, 1234) and
neighbour ties are broken by index, so a run is deterministic.

Defaults: combinations are the run's configured combinations, else the model's head weights (the
dataset's published ones, or the exported manifest's). n_clusters is the number of training
classes of the dataset's split rule (algorithm.md 7.2; a validation carve-out does not change the test
split, and its classes count as training classes here); with classes="all", the number of classes
evaluated.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from diva_tf.config import HEAD_NAMES, Config, ConfigError
from diva_tf.core.renamed import renamed_keywords
from diva_tf.evaluation import (FAISS_DEFAULT_SEED, combination_name, default_recall_k,
                                embed_dataset, evaluate_embeddings, format_table,
                                named_embeddings, save_retrievals, write_json)

CLASSES = ("test", "all")


@dataclasses.dataclass
class Target:
    """A model to evaluate: images float32 [n, H, W, 3] in 0..255 -> {head: unit-norm [n, d]}."""

    embed_fn: Callable
    cfg: Config  # data description; cfg.diva_features are the heads, in order
    head_weights: tuple
    combinations: list  # default combinations (tuples of weights)
    source: dict


def _heads_in_order(names) -> list:
    return [h for h in HEAD_NAMES if h in set(names)]


def workdir_target(workdir: str, checkpoint: str = "best") -> Target:
    """A training run's weights; its config describes the data and default combinations."""
    import tensorflow as tf

    from diva_tf.runs.run_folder import load_model

    model, cfg = load_model(workdir, checkpoint)
    weights = tuple(cfg.head_weights)
    combos = cfg.combinations(cfg.diva_features) or [weights]
    embed = tf.function(lambda images: model(images, training=False))
    return Target(embed, cfg, weights, combos,
                  {"workdir": os.path.abspath(workdir), "checkpoint": checkpoint})


def saved_model_target(path: str, dataset: str | None = None) -> Target:
    """An exported SavedModel (version folder or base path). Heads, weights, crop and resize come
    from assets/diva_manifest.json when present, else from the `serve_images` signature (outputs
    other than "embedding"; the input's crop) with the dataset's published weights."""
    import tensorflow as tf

    from diva_tf.serving import export

    version_dir, version = export.resolve_saved_model(path)
    try:
        manifest = export.read_manifest(version_dir)
    except export.ExportError:
        manifest = {}
    root = tf.saved_model.load(version_dir)
    if export.IMAGES_SIGNATURE not in root.signatures:
        raise ConfigError(f"{version_dir} has no {export.IMAGES_SIGNATURE!r} signature "
                          f"(has {sorted(root.signatures)})")
    signature = root.signatures[export.IMAGES_SIGNATURE]
    heads = list(manifest.get("heads") or _heads_in_order(signature.structured_outputs))
    crop = manifest.get("crop") or signature.structured_input_signature[1][export.IMAGES_INPUT].shape[1]
    dataset = dataset or manifest.get("dataset")
    if not dataset:
        raise ConfigError(f"{version_dir}: no dataset recorded in the export; pass --dataset")
    cfg = Config(dataset=dataset, diva_features=heads, crop=int(crop),
                 resize=int(manifest.get("resize") or Config.resize))
    weights = tuple(manifest.get("head_weights") or cfg.head_weights)

    def embed(images):
        outputs = signature(**{export.IMAGES_INPUT: tf.convert_to_tensor(images, tf.float32)})
        return {h: outputs[h] for h in heads}

    embed.root = root  # keeps the variables alive as long as the function
    return Target(embed, cfg, weights, [weights],
                  {"saved_model": os.path.abspath(version_dir), "version": version})


def run(target: Target, combinations=None, recall_k=None, n_clusters: int | None = None,
        kmeans_seed: int = FAISS_DEFAULT_SEED, output_json: str | None = None,
        save_retrievals_n: int = 0, retrievals_png: str | None = None, retrievals_k: int = 4,
        verbose: bool = True, classes: str = "test") -> dict:
    """Embed the test split of target.cfg (classes="test") or every class of its dataset
    (classes="all"), score every head and combination; returns the results {name: metrics} after
    printing the table and writing the optional JSON and PNG."""
    from diva_tf import data
    from diva_tf.data.splits import concat_splits

    if classes not in CLASSES:
        raise ConfigError(f"--classes={classes!r}: choose one of {', '.join(CLASSES)}")
    cfg = target.cfg
    heads = list(cfg.diva_features)
    combinations = list(combinations or target.combinations)
    recall_k = list(recall_k or default_recall_k(cfg.dataset))
    splits = data.load_splits(cfg.replace(val_classes_fraction=0.0))
    split = splits.test if classes == "test" else concat_splits(splits.train, splits.test)
    n_clusters = int(n_clusters or (splits.train if classes == "test" else split).num_classes)
    batches = data.eval_dataset(split, cfg, cfg.eval_batch_size)
    embs, labels = embed_dataset(target.embed_fn, batches, verbose)
    results = evaluate_embeddings(embs, labels, heads, combinations, recall_k, n_clusters,
                                  cfg.dataset, kmeans_seed)
    print(format_table(results))
    if output_json:
        write_json(output_json, results, {
            **target.source, "dataset": cfg.dataset, "split": classes, "n_images": len(labels),
            "heads": heads, "combinations": [list(c) for c in combinations],
            "recall_k": recall_k, "n_clusters": n_clusters, "kmeans_seed": kmeans_seed,
            "max_images": cfg.max_images})
    if save_retrievals_n > 0:
        primary = combination_name(heads, combinations[0]) if combinations else heads[0]
        emb = named_embeddings(embs, heads, combinations)[primary]
        path = retrievals_png or os.path.join(os.path.dirname(output_json or "") or ".",
                                              "retrievals.png")
        save_retrievals(path, emb, labels, split.images, save_retrievals_n, retrievals_k,
                        kmeans_seed, class_names=split.class_names)
        print(f"retrievals of {primary}: {path}")
    return results




@renamed_keywords(seed="kmeans_seed")
def evaluate_run(workdir: str, checkpoint: str = "best", *, data_dir: str | None = None,
                 classes: str = "test", **kwargs) -> dict:
    """{name: metrics} of a training run's weights (`checkpoint`: best or last) on its dataset
    (`data_dir` replaces the run's); `kwargs` are `run`'s (combinations, recall_k, n_clusters,
    kmeans_seed, output_json, save_retrievals_n, verbose...)."""
    target = workdir_target(workdir, checkpoint)
    if data_dir is not None:
        target.cfg = target.cfg.replace(data_dir=data_dir)
    return run(target, classes=classes, **kwargs)


@renamed_keywords(saved_model="export_dir", seed="kmeans_seed")
def evaluate_export(export_dir: str, dataset: str | None = None, *,
                    data_dir: str | None = None, classes: str = "test", **kwargs) -> dict:
    """{name: metrics} of an exported SavedModel (version folder or base path) on `dataset` (default:
    the one the export records) in `data_dir`; `kwargs` are `run`'s."""
    target = saved_model_target(export_dir, dataset)
    if data_dir is not None:
        target.cfg = target.cfg.replace(data_dir=data_dir)
    return run(target, classes=classes, **kwargs)
