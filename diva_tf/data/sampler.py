"""Mini-batch samplers (algorithm.md 3.2) as pure numpy: the batches of epoch e depend only on
(seed, e), so a run resumed at epoch e sees exactly the batches it would have seen.

- `class_random` (DiVA): each batch makes B / samples_per_class class draws, uniformly WITH
  replacement over the training classes; each draw takes samples_per_class images uniformly WITH
  replacement within the class.
- `class_without_replacement`: the B / samples_per_class classes of a batch are distinct, and the
  samples_per_class images of a draw are distinct. Classes with fewer than samples_per_class
  images cannot supply that and are never drawn (a warning counts them); fewer eligible classes
  than draws per batch is an error.

An epoch is `Sampler.steps(N)` batches: --steps_per_epoch if > 0, else floor(N / B). `SAMPLERS`
(name -> draw function) is the one registry of --data_sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from absl import logging

from diva_tf.core.choices import lookup
from diva_tf.data.errors import DataError

_STREAM = 0x5A4D50  # separates the sampler's random stream from other uses of (seed, epoch)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, _STREAM])))


def _by_class(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image indices grouped by class, start of each class in it, images per class)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def _distinct_ints(rng, highs: np.ndarray, k: int) -> np.ndarray:
    """[n, k] ints, row i k distinct uniform draws from range(highs[i]) (needs highs >= k):
    draw from range(high - j) and shift past the earlier picks, in ascending order."""
    picks = np.empty((len(highs), 0), np.int64)
    for j in range(k):
        r = rng.integers(0, highs - j)
        for col in np.sort(picks, axis=1).T:
            r = r + (r >= col)
        picks = np.concatenate([picks, r[:, None]], axis=1)
    return picks


def _class_random(rng, eligible, counts, steps, draws, spc):
    classes = eligible[rng.integers(0, len(eligible), size=(steps, draws))]
    within = rng.integers(0, counts[classes][..., None], size=(steps, draws, spc))
    return classes, within


def _class_without_replacement(rng, eligible, counts, steps, draws, spc):
    classes = np.stack([eligible[rng.choice(len(eligible), draws, replace=False)]
                        for _ in range(steps)])
    within = _distinct_ints(rng, counts[classes].reshape(-1), spc).reshape(steps, draws, spc)
    return classes, within


SAMPLERS = {"class_random": _class_random, "class_without_replacement": _class_without_replacement}


@dataclass(frozen=True)
class Sampler:
    """One sampler setting; construction checks it (`PipelineOptions.validate` builds one for
    that, and `PipelineOptions.sampler` gives the one of a run)."""

    kind: str                # a SAMPLERS name (--data_sampler)
    bs: int                  # global batch size B
    samples_per_class: int   # images per class draw
    seed: int
    steps_per_epoch: int = 0  # > 0 overrides floor(N / B)

    def __post_init__(self):
        lookup(SAMPLERS, "data_sampler", self.kind, "sampler", DataError)
        if self.bs <= 0 or self.samples_per_class <= 0:
            raise DataError("--bs and --samples_per_class must be positive")
        if self.bs % self.samples_per_class:
            raise DataError(f"--bs={self.bs} is not a multiple of "
                            f"--samples_per_class={self.samples_per_class}")

    @property
    def draws(self) -> int:
        """Class draws per batch."""
        return self.bs // self.samples_per_class

    def steps(self, n_images: int) -> int:
        """Batches per epoch: steps_per_epoch if > 0, else floor(n_images / B)."""
        steps = self.steps_per_epoch if self.steps_per_epoch > 0 else n_images // self.bs
        if steps <= 0:
            raise DataError(f"the training split has {n_images} images, fewer than one batch of "
                            f"--bs={self.bs}: lower --bs or set --steps_per_epoch")
        return steps

    def _eligible(self, counts: np.ndarray) -> np.ndarray:
        """The classes this sampler may draw; DataError if they cannot fill a batch."""
        if self.kind != "class_without_replacement":
            return np.flatnonzero(counts > 0)
        eligible = np.flatnonzero(counts >= self.samples_per_class)
        if len(eligible) < self.draws:
            raise DataError(f"class_without_replacement needs {self.draws} distinct classes per "
                            f"batch (--bs / --samples_per_class) with >= {self.samples_per_class} "
                            f"images each, but only {len(eligible)} classes qualify: lower --bs or "
                            "use class_random")
        return eligible

    def check(self, labels) -> None:
        """Raise now (not inside tf.data) if the sampler cannot run; warn about skipped classes."""
        counts = np.bincount(np.asarray(labels))
        skipped = len(counts) - len(self._eligible(counts))
        if skipped:
            logging.warning("%s: %d class(es) with fewer than %d images are never sampled",
                            self.kind, skipped, self.samples_per_class)

    def epoch_indices(self, labels, epoch: int, steps: int | None = None) -> np.ndarray:
        """[steps, B] int32 image indices of one epoch's batches (default steps: `self.steps`); rows
        of a batch come in class draws of samples_per_class consecutive images."""
        labels = np.asarray(labels)
        order, starts, counts = _by_class(labels)
        eligible = self._eligible(counts)
        steps = self.steps(len(labels)) if steps is None else steps
        classes, within = SAMPLERS[self.kind](epoch_rng(self.seed, epoch), eligible, counts, steps,
                                              self.draws, self.samples_per_class)
        return order[starts[classes][..., None] + within].reshape(steps, self.bs).astype(np.int32)
