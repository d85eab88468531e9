"""Miners (algorithm.md 4.2-4.4): distance-weighted, shared (permuted labels) and intra-class triplets."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

import reference_losses as ref
from diva_tf.objectives import losses, miners

SEED = tf.constant([3, 11], tf.int64)


def _seeds(n, salt=0):
    return tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(salt, tf.int64))], axis=1)


def _draw_many(miner, num_seeds, salt=0):
    """Triplets of `miner(seed)` for many seeds at once: numpy arrays [num_seeds, T]."""
    out = tf.function(lambda s: tf.vectorized_map(miner, s))(_seeds(num_seeds, salt))
    return [t.numpy() for t in out]


def _binomial_tolerance(p, n, z=5.0):
    return z * np.sqrt(p * (1 - p) / n) + 1.0 / n


def _plane_points(distances):
    """Unit vectors in R^16: point 0 is e1, point k is at distance distances[k-1] from it."""
    pts = [np.eye(16)[0]]
    for k, d in enumerate(distances):
        cos = 1 - d * d / 2
        v = cos * np.eye(16)[0] + math.sqrt(max(1 - cos * cos, 0.0)) * np.eye(16)[1 + k % 15]
        pts.append(v)
    return np.array(pts)


# ---- distance-weighted miner (algorithm.md 4.2) ----------------------------------------------------

def test_pairwise_distances_match_numpy():
    x = ref.unit_rows(np.random.default_rng(0), 7, 5)
    x[3] = x[1]
    d = miners.pairwise_distances(tf.constant(x)).numpy()
    np.testing.assert_allclose(d, ref.pairwise_distances(x), atol=1e-7)
    assert d[1, 3] == 0.0 and np.all(np.isfinite(d))


@pytest.mark.parametrize("dim", [128, 16, 4])
def test_log_sphere_weights_formula(dim):
    d = np.linspace(0.5, 1.99, 40)
    got = miners.log_sphere_weights(tf.constant(d), dim).numpy()
    np.testing.assert_allclose(got, [ref.sphere_log_weight(v, dim) for v in d], rtol=1e-10)


def test_log_sphere_weights_finite_and_dominant_at_antipodes():
    w = miners.log_sphere_weights(tf.constant([0.5, 1.999, 2.0, 2.0 + 1e-6], tf.float32), 128).numpy()
    assert np.all(np.isfinite(w)) and w[2] > w[1] > w[0]


def test_negative_probabilities_match_reference_with_clamp_and_labels():
    # anchor 0 sees negatives at 0.2 and 0.4 (both clamped to 0.5), 0.7, 1.0, 1.4, 1.8; one positive.
    x = _plane_points([0.3, 0.2, 0.4, 0.7, 1.0, 1.4, 1.8])
    labels = np.array([0, 0, 1, 2, 1, 3, 4, 5])
    q = miners.negative_probabilities(tf.constant(x), tf.constant(labels)).numpy()
    np.testing.assert_allclose(q, ref.negative_probabilities(x, labels), rtol=1e-9, atol=1e-300)
    assert q[0, 2] == pytest.approx(q[0, 3], rel=1e-12)
    assert q[0, 1] == 0.0 and q[0, 0] == 0.0


@pytest.mark.parametrize("dim,cutoff", [(128, 0.5), (8, 0.5), (8, 0.0)])
def test_negative_probabilities_random_batches(dim, cutoff):
    x = ref.unit_rows(np.random.default_rng(dim), 10, dim)
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3, 4, 4])
    q = miners.negative_probabilities(tf.constant(x), tf.constant(labels), cutoff).numpy()
    np.testing.assert_allclose(q, ref.negative_probabilities(x, labels, cutoff), rtol=1e-8, atol=1e-300)
    np.testing.assert_allclose(q.sum(1), 1.0)


def test_distance_miner_sampling_distribution():
    """Empirical negative and positive frequencies over 4000 seeds vs q_ij and uniform positives."""
    rng = np.random.default_rng(1)
    x = tf.constant(ref.unit_rows(rng, 8, 6))
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    n = 4000
    anchors, positives, negatives, valid = _draw_many(
        lambda s: miners.distance_weighted_triplets(x, tf.constant(labels), s), n)
    q = ref.negative_probabilities(x.numpy(), labels)
    np.testing.assert_array_equal(valid[0], [1, 1, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(anchors[0], np.arange(8))
    for a in range(7):
        assert np.all(labels[negatives[:, a]] != labels[a])
        assert np.all((labels[positives[:, a]] == labels[a]) & (positives[:, a] != a))
        freq = np.bincount(negatives[:, a], minlength=8) / n
        assert np.all(np.abs(freq - q[a]) <= _binomial_tolerance(q[a], n)), (a, freq, q[a])
    assert q[:7].max() > 3 * q[:7][q[:7] > 0].min()  # the weighting is far from uniform here
    pos_freq = np.bincount(positives[:, 0], minlength=8)[[1, 2]] / n
    assert np.all(np.abs(pos_freq - 0.5) <= _binomial_tolerance(0.5, n))


def test_distance_miner_antipodal_negative_is_finite_and_dominant():
    x = np.zeros((4, 4))
    x[0, 0], x[1, 0], x[2, 0], x[3, 1] = 1, 1, -1, 1
    labels = tf.constant([0, 0, 1, 2])
    q = miners.negative_probabilities(tf.constant(x, tf.float32), labels).numpy()
    assert np.all(np.isfinite(q)) and q[0, 2] > 0.999
    a, p, n, valid = miners.distance_weighted_triplets(tf.constant(x, tf.float32), labels, SEED)
    assert n.numpy()[0] == 2 and valid.numpy()[0] == 1


@pytest.mark.parametrize("labels,expected", [
    ([4, 4, 4, 4], [0, 0, 0, 0]),  # no negatives
    ([0, 1, 2, 3], [0, 0, 0, 0]),  # no positives
    ([0, 0, 1, 2], [1, 1, 0, 0]),
])
def test_distance_miner_valid_mask_edge_cases(labels, expected):
    x = tf.constant(ref.unit_rows(np.random.default_rng(2), 4, 8), tf.float32)
    a, p, n, valid = miners.distance_weighted_triplets(x, tf.constant(labels), SEED)
    np.testing.assert_array_equal(valid.numpy(), expected)
    assert losses.margin_loss(x, tf.constant(labels), tf.fill([5], 1.2), (a, p, n, valid)).numpy() >= 0


def test_miners_are_pure_functions_of_the_seed_in_eager_graph_and_xla():
    x = tf.constant(ref.unit_rows(np.random.default_rng(3), 12, 16), tf.float32)
    labels = tf.constant([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    calls = {
        "distance": lambda s: miners.distance_weighted_triplets(x, labels, s),
        "shared": lambda s: miners.shared_permuted_triplets(x, labels, s),
        "intra": lambda s: miners.intra_random_triplets(labels, s),
    }
    for name, call in calls.items():
        eager = call(SEED)
        for compiled in (tf.function(call), tf.function(call, jit_compile=True)):
            for e, c in zip(eager, compiled(SEED)):
                np.testing.assert_array_equal(e.numpy(), c.numpy(), err_msg=name)
        other = call(SEED + 1)
        assert any(np.any(e.numpy() != o.numpy()) for e, o in zip(eager, other)), name
        assert all(t.shape == (12,) for t in eager), name


def test_distance_miner_ignores_embedding_gradients():
    x = tf.Variable(ref.unit_rows(np.random.default_rng(4), 6, 8))
    with tf.GradientTape() as tape:
        trip = miners.distance_weighted_triplets(x, tf.constant([0, 0, 1, 1, 2, 2]), SEED)
        probe = tf.reduce_sum(miners.negative_probabilities(x, tf.constant([0, 0, 1, 1, 2, 2])))
    assert tape.gradient(probe, x) is None
    assert trip[0].dtype == trip[1].dtype == trip[2].dtype == tf.int32 and trip[3].dtype == tf.float32


# ---- shared miner (algorithm.md 4.3) ---------------------------------------------------------------

def test_permute_labels_is_a_permutation():
    labels = tf.constant([0, 0, 1, 1, 2, 2, 7, 9])
    out = miners.permute_labels(labels, SEED).numpy()
    assert sorted(out) == sorted(labels.numpy()) and not np.array_equal(out, labels.numpy())
    np.testing.assert_array_equal(out, miners.permute_labels(labels, SEED).numpy())


def test_shared_miner_positives_share_a_permuted_label():
    """With 2 samples per class, the positives of the permuted labels form a perfect matching that
    pairs an anchor with its true classmate only 1/(B-1) of the time, uniformly over the others."""
    b = 16
    labels = np.repeat(np.arange(b // 2), 2)
    x = tf.constant(ref.unit_rows(np.random.default_rng(5), b, 8))
    n = 2000
    anchors, positives, negatives, valid = _draw_many(
        lambda s: miners.shared_permuted_triplets(x, tf.constant(labels), s), n, salt=1)
    assert np.all(valid == 1)
    rows = np.arange(n)[:, None]
    np.testing.assert_array_equal(positives[rows, positives], np.broadcast_to(np.arange(b), (n, b)))
    assert np.all(positives != anchors) and np.all(negatives != positives) and np.all(negatives != anchors)
    true_partner = labels[positives] == labels[anchors]
    assert abs(true_partner.mean() - 1 / (b - 1)) < 0.01
    freq = np.bincount(positives[:, 0], minlength=b)[1:] / n
    assert np.all(np.abs(freq - 1 / (b - 1)) <= _binomial_tolerance(1 / (b - 1), n))
    # negatives may come from the anchor's true class (its classmate), unlike the plain miner
    assert np.any(labels[negatives] == labels[anchors])


def test_shared_triplets_use_beta_of_the_true_label():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    beta = np.array([0.9, 1.1, 1.3, 1.5])
    x = ref.unit_rows(np.random.default_rng(6), 8, 8)
    trip = miners.shared_permuted_triplets(tf.constant(x), tf.constant(labels), SEED)
    assert np.any(labels[trip[1].numpy()] != labels)  # at least one cross-class positive
    got = losses.margin_loss(tf.constant(x), tf.constant(labels), tf.constant(beta), trip).numpy()
    triplets = list(zip(*(t.numpy() for t in trip[:3])))
    assert got == pytest.approx(ref.margin_loss(x, labels, beta, triplets), rel=1e-10)


# ---- intra-class miner (algorithm.md 4.4) ----------------------------------------------------------

def test_intra_miner_distribution_classes_uniform_and_draws_with_replacement():
    """Classes {5: 4 samples, 7: 2, 9: 2} are each chosen 1/3 of the time (not by sample count); the
    8 index combinations of a 2-sample class, and the 64 of the 4-sample one, are equally likely."""
    labels = [5, 5, 7, 9, 5, 7, 9, 5]
    n = 3000
    a, p, neg, valid = _draw_many(lambda s: miners.intra_random_triplets(tf.constant(labels), s), n, salt=2)
    assert np.all(valid == 1) and a.shape == (n, 8)
    probs = ref.intra_triplet_probabilities(labels)
    counts = {}
    for key in zip(a.ravel(), p.ravel(), neg.ravel()):
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= set(probs)
    total = a.size
    for key, prob in probs.items():
        assert abs(counts.get(key, 0) / total - prob) <= _binomial_tolerance(prob, total), key
    class_freq = {c: np.mean(np.array(labels)[a.ravel()] == c) for c in (5, 7, 9)}
    for c, f in class_freq.items():
        assert abs(f - 1 / 3) < 0.015, class_freq
    combos_7 = {k for k in counts if labels[k[0]] == 7}
    assert combos_7 == set(itertools.product([2, 5], repeat=3))


def test_intra_miner_num_triplets():
    a, p, n, valid = miners.intra_random_triplets(tf.constant([1, 1, 2, 2]), SEED, num_triplets=10)
    assert a.shape == p.shape == n.shape == valid.shape == (10,)


def test_miners_accept_unknown_static_shapes_as_after_all_gather():
    x = tf.constant(ref.unit_rows(np.random.default_rng(7), 8, 16), tf.float32)
    labels = tf.constant([0, 0, 1, 1, 2, 2, 3, 3])
    spec = (tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([2], tf.int64))
    for miner in (miners.distance_weighted_triplets, miners.shared_permuted_triplets,
                  lambda e, y, s: miners.intra_random_triplets(y, s)):
        out = tf.function(miner, input_signature=spec)(x, labels, SEED)
        for a, b in zip(out, miner(x, labels, SEED)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
