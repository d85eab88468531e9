"""The shared-task miner's negative distribution (algorithm.md 4.3) against an exact reference.

With every label twice, the permuted labels pair each anchor with a uniformly random other index
(its positive); the negative is then distance-weighted among the indices that do not share the
anchor's permuted label. The exact law of the negative is the average, over the B - 1 equally likely
partners, of the plain distance-weighted miner's q for that labelling (tests/reference_losses.py).
"""

import numpy as np
import tensorflow as tf

import reference_losses as ref
from diva_tf.objectives import miners


def shared_negative_law(x):
    """[B, B]: P(negative = j | anchor a), the partner p of a averaged out."""
    b = len(x)
    law = np.zeros((b, b))
    for a in range(b):
        for p in range(b):
            if p != a:
                labels = np.arange(b)
                labels[p] = a
                law[a] += ref.negative_probabilities(x, labels)[a] / (b - 1)
    return law


def test_shared_miner_negative_frequencies_match_the_exact_law():
    """4000 draws on a class-clustered batch, where the plain miner's law (classmate never drawn) and
    the shared one differ most."""
    rng = np.random.default_rng(7)
    b, dim, n = 10, 8, 4000
    labels = np.repeat(np.arange(b // 2), 2)
    centres = ref.unit_rows(rng, b // 2, dim)
    x = ref.normalize_rows(centres[labels] + 0.15 * rng.normal(size=(b, dim)))
    law = shared_negative_law(x)
    np.testing.assert_allclose(law.sum(axis=1), 1.0, atol=1e-12)
    seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(2, tf.int64))], axis=1)
    xs, ls = tf.constant(x, tf.float32), tf.constant(labels)
    _, positives, negatives, _ = (t.numpy() for t in tf.function(lambda s: tf.vectorized_map(
        lambda one: miners.shared_permuted_triplets(xs, ls, one), s))(seeds))
    assert np.all(negatives != positives)
    for a in range(b):
        freq = np.bincount(negatives[:, a], minlength=b) / n
        tolerance = 5.0 * np.sqrt(law[a] * (1 - law[a]) / n) + 1.0 / n
        assert np.all(np.abs(freq - law[a]) <= tolerance), (a, freq, law[a])
    assert np.mean([law[a, a ^ 1] for a in range(b)]) > 0.3  # the true classmate is a likely negative
