"""Mini-batch samplers (spec 3.2) as pure numpy: the batches of epoch e depend only on
(seed, e), so a run resumed at epoch e sees exactly the batches it would have seen.

- `class_random` (DiVA): each batch makes B / samples_per_class class draws, uniformly WITH
  replacement over the training classes; each draw takes samples_per_class images uniformly WITH
  replacement within the class.
- `class_without_replacement`: the B / samples_per_class classes of a batch are distinct, and the
  samples_per_class images of a draw are distinct. Classes with fewer than samples_per_class
  images cannot supply that and are never drawn (a warning counts them); fewer eligible classes
  than draws per batch is an error.

An epoch is `steps_per_epoch(split, cfg)` batches: --steps_per_epoch if > 0, else floor(N / B).
"""

from __future__ import annotations

import numpy as np
from absl import logging

from diva_tf.data.errors import DataError

_STREAM = 0x5A4D50  # separates the sampler's random stream from other uses of (seed, epoch)


def epoch_steps(n_images: int, cfg) -> int:
    steps = cfg.steps_per_epoch if cfg.steps_per_epoch > 0 else n_images // cfg.bs
    if steps <= 0:
        raise DataError(f"the training split has {n_images} images, fewer than one batch of "
                        f"--bs={cfg.bs}: lower --bs or set --steps_per_epoch")
    return steps


def steps_per_epoch(split, cfg) -> int:
    """Batches per epoch: cfg.steps_per_epoch if > 0, else floor(N_train / B)."""
    return epoch_steps(len(split.labels), cfg)


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


def _eligible(counts: np.ndarray, cfg) -> np.ndarray:
    """Classes the sampler may draw."""
    if cfg.data_sampler == "class_without_replacement":
        return np.flatnonzero(counts >= cfg.samples_per_class)
    return np.flatnonzero(counts > 0)


def _validate(counts: np.ndarray, cfg) -> np.ndarray:
    """The eligible classes; DataError for settings the sampler cannot follow."""
    if cfg.data_sampler not in _DRAW:
        raise DataError(f"--data_sampler={cfg.data_sampler!r}: choose one of {tuple(_DRAW)}")
    if cfg.bs % cfg.samples_per_class:
        raise DataError(f"--bs={cfg.bs} is not a multiple of "
                        f"--samples_per_class={cfg.samples_per_class}")
    eligible = _eligible(counts, cfg)
    draws = cfg.bs // cfg.samples_per_class
    if cfg.data_sampler == "class_without_replacement" and len(eligible) < draws:
        raise DataError(f"class_without_replacement needs {draws} distinct classes per batch "
                        f"(--bs / --samples_per_class) with >= {cfg.samples_per_class} images "
                        f"each, but only {len(eligible)} classes qualify: lower --bs or use "
                        "class_random")
    return eligible


def check_sampler(labels, cfg) -> None:
    """Raise now (not inside tf.data) if the sampler cannot run; warn about skipped classes."""
    counts = np.bincount(np.asarray(labels))
    skipped = len(counts) - len(_validate(counts, cfg))
    if skipped:
        logging.warning("%s: %d class(es) with fewer than %d images are never sampled",
                        cfg.data_sampler, skipped, cfg.samples_per_class)


def _class_random(rng, eligible, counts, steps, draws, spc):
    classes = eligible[rng.integers(0, len(eligible), size=(steps, draws))]
    within = rng.integers(0, counts[classes][..., None], size=(steps, draws, spc))
    return classes, within


def _class_without_replacement(rng, eligible, counts, steps, draws, spc):
    classes = np.stack([eligible[rng.choice(len(eligible), draws, replace=False)]
                        for _ in range(steps)])
    within = _distinct_ints(rng, counts[classes].reshape(-1), spc).reshape(steps, draws, spc)
    return classes, within


_DRAW = {"class_random": _class_random, "class_without_replacement": _class_without_replacement}


def sample_epoch_indices(labels, cfg, epoch: int, steps: int | None = None) -> np.ndarray:
    """[steps, B] int32 image indices of one epoch's batches; rows of a batch come in class draws
    of cfg.samples_per_class consecutive images. Uses cfg.bs, cfg.samples_per_class, cfg.seed,
    cfg.data_sampler (and cfg.steps_per_epoch when steps is None)."""
    labels = np.asarray(labels)
    order, starts, counts = _by_class(labels)
    eligible = _validate(counts, cfg)
    steps = epoch_steps(len(labels), cfg) if steps is None else steps
    draws = cfg.bs // cfg.samples_per_class
    classes, within = _DRAW[cfg.data_sampler](epoch_rng(cfg.seed, epoch), eligible, counts, steps,
                                              draws, cfg.samples_per_class)
    return order[starts[classes][..., None] + within].reshape(steps, cfg.bs).astype(np.int32)
