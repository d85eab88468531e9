"""Embedding a whole evaluation split, batch by batch, into numpy arrays."""

from __future__ import annotations

import numpy as np


def _num_batches(dataset) -> int | None:
    """Known length of a tf.data.Dataset or a sized iterable, else None."""
    cardinality = getattr(dataset, "cardinality", None)
    if callable(cardinality):
        n = int(cardinality())
        return n if n >= 0 else None
    return len(dataset) if hasattr(dataset, "__len__") else None


def embed_dataset(embed_fn, dataset, verbose: bool = True) -> tuple[dict, np.ndarray]:
    """({output name: float32 [N, d]}, int64 labels [N]) over all (images, labels) batches.

    `embed_fn(images)` returns a dict of per-head (and possibly "embedding") outputs; every key is
    kept, in dataset order. A keras Progbar shows progress when `verbose`.
    """
    progbar = None
    if verbose:
        import keras

        progbar = keras.utils.Progbar(_num_batches(dataset), unit_name="batch")
    outputs, labels = {}, []
    for step, (images, batch_labels) in enumerate(dataset, 1):
        for name, value in embed_fn(images).items():
            outputs.setdefault(name, []).append(np.asarray(value, np.float32))
        labels.append(np.asarray(batch_labels).reshape(-1))
        if progbar is not None:
            progbar.update(step)
    if not labels:
        raise ValueError("the evaluation dataset is empty")
    return ({name: np.concatenate(parts) for name, parts in outputs.items()},
            np.concatenate(labels).astype(np.int64))
