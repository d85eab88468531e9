"""The samplers against their sampling law (algorithm.md 3.2), epoch length, and determinism.

Statistical checks use fixed seeds (so they are not flaky) and bounds at about 4 standard
deviations (chi-square via the Wilson-Hilferty approximation, binomial via the normal one)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from diva_tf.config import Config
from diva_tf.data import DataError, Split

SIZES = np.arange(1, 21)  # class c has c + 1 images: very unequal classes
LABELS = np.repeat(np.arange(len(SIZES)), SIZES).astype(np.int32)


def cfg(**kw):
    base = dict(bs=16, samples_per_class=2, seed=3, data_sampler="class_random")
    return Config(**{**base, **kw})


def sample_epoch_indices(labels, c, epoch, steps=None):
    return c.sampler(c.seed, c.steps_per_epoch).epoch_indices(labels, epoch, steps)


def steps_per_epoch(split, c):
    return c.sampler(c.seed, c.steps_per_epoch).steps(len(split.labels))


def check_sampler(labels, c):
    c.sampler(c.seed, c.steps_per_epoch).check(labels)


def chi2_upper(df: int, z: float = 4.0) -> float:
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def assert_binomial(successes: int, trials: int, p: float):
    sd = math.sqrt(trials * p * (1 - p))
    assert abs(successes - trials * p) < 4 * sd + 1, (successes, trials * p, sd)


def draws(c, epochs=300, labels=LABELS):
    """[n_draws, samples_per_class] image indices over many epochs."""
    batches = np.concatenate([sample_epoch_indices(labels, c, e) for e in range(epochs)])
    return batches.reshape(-1, c.samples_per_class), batches


def test_epoch_length_is_floor_n_over_b_or_the_override():
    split = Split(images=["x"] * len(LABELS), labels=LABELS,
                  class_names=[str(c) for c in range(len(SIZES))])
    assert steps_per_epoch(split, cfg()) == len(LABELS) // 16 == 13
    assert sample_epoch_indices(LABELS, cfg(), 0).shape == (13, 16)
    assert sample_epoch_indices(LABELS, cfg(), 0).dtype == np.int32
    assert steps_per_epoch(split, cfg(steps_per_epoch=5)) == 5
    assert sample_epoch_indices(LABELS, cfg(steps_per_epoch=5), 0).shape == (5, 16)
    assert sample_epoch_indices(LABELS, cfg(), 0, steps=2).shape == (2, 16)
    with pytest.raises(DataError, match="fewer than one batch of --bs=256"):
        steps_per_epoch(split, cfg(bs=256))


def test_class_random_draws_classes_uniformly_with_replacement():
    c = cfg()
    d, batches = draws(c)
    classes = LABELS[d]
    assert (classes == classes[:, :1]).all(), "a draw's images share one class"
    counts = np.bincount(classes[:, 0], minlength=len(SIZES))
    assert chi2(counts) < chi2_upper(len(SIZES) - 1)
    # A class repeats inside a batch as often as drawing with replacement predicts.
    per_batch = LABELS[batches].reshape(len(batches), -1, 2)[:, :, 0]
    repeats = sum(len(set(b)) < len(b) for b in per_batch.tolist())
    k, n = per_batch.shape[1], len(SIZES)
    p_repeat = 1 - math.prod(1 - i / n for i in range(k))
    assert_binomial(repeats, len(per_batch), p_repeat)


def test_class_random_draws_images_uniformly_with_replacement_within_a_class():
    d, _ = draws(cfg())
    starts = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
    for c in (3, 9, 19):
        mine = d[LABELS[d[:, 0]] == c]
        within = np.bincount((mine - starts[c]).ravel(), minlength=SIZES[c])
        assert chi2(within) < chi2_upper(SIZES[c] - 1)
        # Two images of a draw coincide with probability 1 / n.
        assert_binomial(int((mine[:, 0] == mine[:, 1]).sum()), len(mine), 1 / SIZES[c])
    single = d[LABELS[d[:, 0]] == 0]
    assert len(single) and (single == starts[0]).all()  # the 1-image class: its image twice


def test_class_without_replacement_law(caplog):
    c = cfg(data_sampler="class_without_replacement", samples_per_class=3, bs=15)
    with caplog.at_level(logging.WARNING):
        check_sampler(LABELS, c)
    assert "2 class(es) with fewer than 3 images are never sampled" in caplog.text
    d, batches = draws(c, epochs=200)
    per_batch = LABELS[batches].reshape(len(batches), -1, 3)
    assert all(len(set(b)) == len(b) for b in per_batch[:, :, 0].tolist()), "distinct classes"
    assert all(len(set(r)) == 3 for r in d.tolist()), "distinct images within a draw"
    counts = np.bincount(LABELS[d[:, 0]], minlength=len(SIZES))
    assert (counts[:2] == 0).all()
    assert chi2(counts[2:]) < chi2_upper(len(SIZES) - 3)
    starts = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
    for cls in (2, 12):  # 3 and 13 images: every image equally likely
        within = np.bincount((d[LABELS[d[:, 0]] == cls] - starts[cls]).ravel())
        assert chi2(within) < chi2_upper(SIZES[cls] - 1)
    # 3 images, 3 picks: always the whole class.
    assert (np.sort(d[LABELS[d[:, 0]] == 2], axis=1) == starts[2] + np.arange(3)).all()


def test_class_without_replacement_needs_enough_classes():
    with pytest.raises(DataError, match="needs 20 distinct classes per batch"):
        check_sampler(LABELS, cfg(data_sampler="class_without_replacement", bs=40))
    with pytest.raises(DataError, match="only 1 classes qualify"):
        sample_epoch_indices(LABELS, cfg(data_sampler="class_without_replacement", bs=40,
                                         samples_per_class=20, steps_per_epoch=1), 0)


@pytest.mark.parametrize("sampler", ["class_random", "class_without_replacement"])
def test_batches_depend_only_on_seed_and_epoch(sampler):
    c = cfg(data_sampler=sampler)
    a = sample_epoch_indices(LABELS, c, 7)
    np.testing.assert_array_equal(a, sample_epoch_indices(LABELS, c, 7))
    np.testing.assert_array_equal(a, sample_epoch_indices(LABELS.tolist(), c.replace(lr=1.0), 7))
    assert not np.array_equal(a, sample_epoch_indices(LABELS, c, 8))
    assert not np.array_equal(a, sample_epoch_indices(LABELS, c.replace(seed=4), 7))


def test_bad_sampler_settings():
    with pytest.raises(DataError, match="choose one of"):
        sample_epoch_indices(LABELS, cfg(data_sampler="greedy"), 0)
    with pytest.raises(DataError, match="not a multiple"):
        sample_epoch_indices(LABELS, cfg(bs=15), 0)
