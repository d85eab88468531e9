"""Embedding a whole evaluation split, batch by batch, into numpy arrays."""

from __future__ import annotations

import sys
import time

import numpy as np

LOG_EVERY = 30.0  # seconds between progress lines when the output is not a terminal


def _num_batches(dataset) -> int | None:
    """Known length of a tf.data.Dataset or a sized iterable, else None."""
    cardinality = getattr(dataset, "cardinality", None)
    if callable(cardinality):
        n = int(cardinality())
        return n if n >= 0 else None
    return len(dataset) if hasattr(dataset, "__len__") else None


class PlainProgress:
    """Progress for logs: 'embedding: 12/40 batches' every `every` seconds and once at the end, a
    plain line each (Keras's Progbar redraws one line with terminal controls)."""

    def __init__(self, total: int | None, stream=None, every: float = LOG_EVERY,
                 clock=time.monotonic):
        self.total, self.stream, self.every, self.clock = total, stream, every, clock
        self._shown = clock()

    def _line(self, step: int) -> None:
        of = f"/{self.total}" if self.total else ""
        (self.stream or sys.stdout).write(f"embedding: {step}{of} batches\n")

    def update(self, step: int) -> None:
        if self.clock() - self._shown >= self.every:
            self._shown = self.clock()
            self._line(step)

    def done(self, step: int) -> None:
        self._line(step)


def _progress(total: int | None):
    """Keras's Progbar on a terminal, plain lines otherwise."""
    if getattr(sys.stdout, "isatty", lambda: False)():
        import keras

        bar = keras.utils.Progbar(total, unit_name="batch")
        bar.done = lambda step: None
        return bar
    return PlainProgress(total)


def embed_dataset(embed_fn, dataset, verbose: bool = True) -> tuple[dict, np.ndarray]:
    """({output name: float32 [N, d]}, int64 labels [N]) over all (images, labels) batches.

    `embed_fn(images)` returns a dict of per-head (and possibly "embedding") outputs; every key is
    kept, in dataset order. Progress is shown when `verbose` (`_progress`).
    """
    progbar = _progress(_num_batches(dataset)) if verbose else None
    outputs, labels, step = {}, [], 0
    for step, (images, batch_labels) in enumerate(dataset, 1):
        for name, value in embed_fn(images).items():
            outputs.setdefault(name, []).append(np.asarray(value, np.float32))
        labels.append(np.asarray(batch_labels).reshape(-1))
        if progbar is not None:
            progbar.update(step)
    if progbar is not None:
        progbar.done(step)
    if not labels:
        raise ValueError("the evaluation dataset is empty")
    return ({name: np.concatenate(parts) for name, parts in outputs.items()},
            np.concatenate(labels).astype(np.int64))
