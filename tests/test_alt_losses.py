"""Alternative discriminative losses: semi-hard triplet, multi-similarity, normalized softmax/ArcFace."""

import math

import numpy as np
import pytest
import tensorflow as tf

import reference_losses as ref
from diva_tf.objectives import losses, miners, registry
from diva_tf.config import Config


def _batch(seed, b=10, dim=4, classes=4):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(classes), rng.integers(0, classes, b - classes)])
    return ref.unit_rows(rng, b, dim), labels


def _deg(a):
    return [math.cos(math.radians(a)), math.sin(math.radians(a))]


# ---- triplet, semi-hard ----------------------------------------------------------------------------

@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("margin", [0.2, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_semihard_matches_numpy(seed, margin, squared):
    x, labels = _batch(seed)
    got = losses.triplet_semihard_loss(tf.constant(x), tf.constant(labels), margin, squared=squared)
    assert got.numpy() == pytest.approx(ref.triplet_semihard_loss(x, labels, margin, squared), rel=1e-10)


def test_triplet_semihard_hand_cases():
    # anchor 0 at 0 deg, positive at 180 (d = 2), negatives at 90 and 270 (d = sqrt 2): no negative is
    # farther than the positive, so the easiest (largest) negative distance is used.
    x = np.array([_deg(0), _deg(180), _deg(90), _deg(270)])
    labels = np.array([0, 0, 1, 1])
    got = losses.triplet_semihard_loss(tf.constant(x), tf.constant(labels), 0.2).numpy()
    # all four positive pairs are alike: 0.2 + 2 - sqrt 2
    assert got == pytest.approx(0.2 + 2 - math.sqrt(2), rel=1e-12)
    # the semi-hard negative is the closest negative beyond d_ap: from 0 deg (positive at 30) that is 40
    # deg, from 30 deg (positive at 0) it is -20 deg (50 deg away), not the hardest one at 40 deg
    x = np.array([_deg(0), _deg(30), _deg(40), _deg(90), _deg(-20)])
    labels = np.array([0, 0, 1, 2, 3])
    chord = lambda angle: 2 * math.sin(math.radians(angle) / 2)  # noqa: E731
    want = ((1.0 + chord(30) - chord(40)) + (1.0 + chord(30) - chord(50))) / 2
    got = losses.triplet_semihard_loss(tf.constant(x), tf.constant(labels), 1.0).numpy()
    assert got == pytest.approx(want, rel=1e-12)
    # no positive pair at all: 0 (tfa would return NaN)
    assert losses.triplet_semihard_loss(tf.constant(x[:3]), tf.constant([0, 1, 2]), 1.0).numpy() == 0.0


def test_triplet_semihard_gradient_matches_finite_differences():
    x0, labels = _batch(3, b=8, dim=3)
    x = tf.Variable(x0)
    with tf.GradientTape() as tape:
        loss = losses.triplet_semihard_loss(x, tf.constant(labels), 0.5)
    fd = ref.central_difference(lambda v: ref.triplet_semihard_loss(v, labels, 0.5), x0)
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), fd, atol=1e-7)
    assert np.abs(fd).max() > 1e-2


# ---- multi-similarity ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params", [dict(), dict(alpha=1.0, beta=20.0, base=0.2, epsilon=0.3)])
def test_multi_similarity_matches_numpy(seed, params):
    x, labels = _batch(seed, b=12, dim=3, classes=3)
    x = x * np.random.default_rng(seed).uniform(0.5, 2.0, size=(12, 1))  # the loss normalises itself
    got = losses.multi_similarity_loss(tf.constant(x), tf.constant(labels), **params).numpy()
    assert got == pytest.approx(ref.multi_similarity_loss(x, labels, **params), rel=1e-10)
    assert got > 0


def test_multi_similarity_mining_discards_easy_pairs():
    # two tight, well separated clusters: every pair is easy, nothing is mined, loss 0
    x = np.array([_deg(0), _deg(5), _deg(180), _deg(185)])
    assert losses.multi_similarity_loss(tf.constant(x), tf.constant([0, 0, 1, 1])).numpy() == 0.0
    # without mining the positive term alone would be (1/2) log(1 + e^{-2 (cos 5 - 0.5)}) per anchor
    assert 0.5 * math.log(1 + math.exp(-2 * (math.cos(math.radians(5)) - 0.5))) > 0.15


def test_multi_similarity_is_zero_with_at_most_one_pair_of_each_kind():
    x1 = np.array([1 / math.sqrt(2), 1 / math.sqrt(2), 0.0])
    x2 = np.array([0.65, -0.3, math.sqrt(1 - 0.65 ** 2 - 0.09)])
    x = np.stack([np.eye(3)[0], x1, x2])  # only (0, 1) is a hard positive and (0, 2) a hard negative
    labels = np.array([0, 0, 1])
    assert losses.multi_similarity_loss(tf.constant(x), tf.constant(labels)).numpy() == 0.0
    assert ref.multi_similarity_loss(x, labels) == 0.0
    x4 = np.concatenate([x, [x2]])
    labels4 = np.array([0, 0, 1, 1])
    got = losses.multi_similarity_loss(tf.constant(x4), tf.constant(labels4)).numpy()
    assert got > 0 and got == pytest.approx(ref.multi_similarity_loss(x4, labels4), rel=1e-10)


# ---- proxy softmax / ArcFace -----------------------------------------------------------------------

@pytest.mark.parametrize("margin", [0.0, 0.3, 0.5])
@pytest.mark.parametrize("scale", [16.0, 4.0])
def test_proxy_softmax_matches_numpy(margin, scale):
    x, labels = _batch(4, b=9, dim=5, classes=4)
    proxies = np.random.default_rng(5).normal(size=(4, 5))
    got = losses.proxy_softmax_loss(tf.constant(x), tf.constant(labels), tf.constant(proxies), scale, margin)
    assert got.numpy() == pytest.approx(ref.proxy_softmax_loss(x, labels, proxies, scale, margin), rel=1e-10)


def test_proxy_softmax_gradient_matches_finite_differences():
    x0, labels = _batch(6, b=6, dim=4, classes=3)
    p0 = np.random.default_rng(7).normal(size=(3, 4))
    x, p = tf.Variable(x0 * 1.3), tf.Variable(p0)
    with tf.GradientTape() as tape:
        loss = losses.proxy_softmax_loss(x, tf.constant(labels), p, 8.0, 0.4)
    gx, gp = tape.gradient(loss, [x, p])
    fx = ref.central_difference(lambda v: ref.proxy_softmax_loss(v, labels, p0, 8.0, 0.4), x0 * 1.3)
    fp = ref.central_difference(lambda v: ref.proxy_softmax_loss(x0 * 1.3, labels, v, 8.0, 0.4), p0)
    np.testing.assert_allclose(gx.numpy(), fx, atol=1e-7)
    np.testing.assert_allclose(gp.numpy(), fp, atol=1e-7)


def test_proxy_init_is_standard_normal():
    w = losses.proxy_initializer(seed=3)((400, 64)).numpy()
    assert abs(w.mean()) < 4 / math.sqrt(w.size) and abs(w.std() - 1.0) < 4 / math.sqrt(2 * w.size)
    np.testing.assert_array_equal(w, losses.proxy_initializer(seed=3)((400, 64)).numpy())


# ---- the --loss registry -----------------------------------------------------------------------------

def test_registry_builds_each_loss_from_its_config_fields():
    """Every --loss name, built from a Config with non-default values for all its fields, equals the
    numpy reference called with those values by hand."""
    cfg = Config(loss_margin_margin=0.35, miner_distance_lower_cutoff=0.7, loss_triplet_margin=0.6,
                 loss_ms_alpha=1.5, loss_ms_beta=30.0, loss_ms_base=0.3, loss_ms_epsilon=0.2,
                 loss_proxy_scale=8.0, loss_proxy_margin=0.25)
    x, labels = _batch(8, b=12, dim=6, classes=4)
    rng = np.random.default_rng(9)
    beta, proxies = rng.uniform(0.8, 1.4, size=4), rng.normal(size=(4, 6))
    seed = tf.constant([3, 4], tf.int64)
    a, p, n, valid = (t.numpy() for t in miners.distance_weighted_triplets(
        tf.constant(x), tf.constant(labels), seed, 0.7))
    keep = valid > 0
    want = {
        "margin": ref.margin_loss(x, labels, beta, list(zip(a[keep], p[keep], n[keep])), 0.35),
        "triplet": ref.triplet_semihard_loss(x, labels, 0.6),
        "multisimilarity": ref.multi_similarity_loss(x, labels, 1.5, 30.0, 0.3, 0.2),
        "proxy": ref.proxy_softmax_loss(x, labels, proxies, 8.0, 0.25),
    }
    assert set(want) <= set(registry.LOSSES)
    params = {"beta": tf.constant(beta), "proxies": tf.constant(proxies)}
    for name in want:
        loss = registry.build_loss(name, "distance", cfg)
        got = loss(tf.constant(x), tf.constant(labels), seed, params).numpy()
        assert got == pytest.approx(want[name], rel=1e-10), name
