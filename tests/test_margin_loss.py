"""Margin loss with per-class beta (algorithm.md 4.1)."""

import math

import numpy as np
import pytest
import tensorflow as tf

import reference_losses as ref
from diva_tf.objectives import losses, miners


def _deg(a):
    return [math.cos(math.radians(a)), math.sin(math.radians(a))]


# Unit vectors at 0, 90, 180, 10 and 60 degrees.
X = np.array([_deg(0), _deg(90), _deg(180), _deg(10), _deg(60)])
LABELS = np.array([0, 0, 1, 0, 1])
BETA = np.array([1.2, 1.0])
INACTIVE = (0, 3, 2)   # d_ap = 0.174, d_an = 2: no hinge active
BOTH = (0, 1, 4)       # d_ap = sqrt 2, d_an = 1, beta 1.2: both hinges active
POS_ONLY = (1, 0, 2)   # d_ap = d_an = sqrt 2, beta 1.2: only the positive hinge


def _loss(triplets, valid=None, x=X, labels=LABELS, beta=BETA):
    a, p, n = (tf.constant(v, tf.int32) for v in zip(*triplets))
    trip = (a, p, n) if valid is None else (a, p, n, tf.constant(valid, tf.float32))
    return losses.margin_loss(tf.constant(x), tf.constant(labels), tf.constant(beta), trip).numpy()


def test_hand_worked_normaliser_counts_triplets_with_any_active_hinge_once():
    root2, one = math.sqrt(2 + 1e-8), math.sqrt(1 + 1e-8)
    both = (root2 - 1.2 + 0.2) + (1.2 - one + 0.2)
    pos_only = root2 - 1.2 + 0.2
    assert _loss([INACTIVE, BOTH, POS_ONLY]) == pytest.approx((both + pos_only) / 2, rel=1e-12)


def test_no_active_hinge_gives_zero_loss_and_zero_gradient():
    x, beta = tf.Variable(X), tf.Variable(BETA)
    trip = tuple(tf.constant([v], tf.int32) for v in INACTIVE)
    with tf.GradientTape() as tape:
        loss = losses.margin_loss(x, tf.constant(LABELS), beta, trip)
    gx, gb = (tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, [x, beta]))
    assert loss.numpy() == 0.0
    assert np.all(gx == 0) and np.all(gb == 0)


def test_invalid_triplets_are_ignored():
    assert _loss([INACTIVE, BOTH, POS_ONLY], valid=[1, 0, 1]) == pytest.approx(_loss([POS_ONLY]), rel=1e-12)
    assert _loss([BOTH, POS_ONLY], valid=[0, 0]) == 0.0


def test_beta_is_looked_up_by_the_anchor_label():
    # anchor 4 has label 1: beta 1.0 -> d_ap = sqrt 3: both hinges 0.932 and 0.2
    expected = (math.sqrt(3 + 1e-8) - 1.0 + 0.2) + (1.0 - math.sqrt(1 + 1e-8) + 0.2)
    assert _loss([(4, 2, 0)]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_values_with_mined_triplets_match_numpy(dtype, rtol):
    rng = np.random.default_rng(0)
    x = ref.unit_rows(rng, 12, 32).astype(dtype)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6])
    beta = rng.uniform(0.8, 1.4, size=7)
    a, p, n, valid = miners.distance_weighted_triplets(tf.constant(x), tf.constant(labels),
                                                       tf.constant([1, 2], tf.int64))
    got = losses.margin_loss(tf.constant(x), tf.constant(labels), tf.Variable(beta, dtype=tf.float32),
                             (a, p, n, valid)).numpy()
    keep = valid.numpy() > 0
    triplets = list(zip(a.numpy()[keep], p.numpy()[keep], n.numpy()[keep]))
    assert len(triplets) == 10
    want = ref.margin_loss(x.astype(np.float64), labels, beta.astype(np.float32), triplets)
    assert got == pytest.approx(want, rel=rtol)


def test_gradients_wrt_embeddings_and_beta_match_finite_differences():
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(6, 4)) * 0.6
    labels = np.array([0, 0, 1, 1, 2, 2])
    beta0 = np.array([1.0, 1.3, 0.7])
    triplets = [(0, 1, 2), (1, 0, 4), (2, 3, 5), (3, 2, 0), (4, 5, 1), (5, 4, 3), (0, 1, 5)]
    valid = [1, 1, 1, 1, 1, 1, 0]
    kept = [t for t, v in zip(triplets, valid) if v]
    x, beta = tf.Variable(x0), tf.Variable(beta0)
    trip = tuple(tf.constant(v, tf.int32) for v in zip(*triplets)) + (tf.constant(valid, tf.float32),)
    with tf.GradientTape() as tape:
        loss = losses.margin_loss(x, tf.constant(labels), beta, trip)
    gx, gb = (tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, [x, beta]))
    assert loss.numpy() == pytest.approx(ref.margin_loss(x0, labels, beta0, kept), rel=1e-12)
    fx = ref.central_difference(lambda v: ref.margin_loss(v, labels, beta0, kept), x0)
    fb = ref.central_difference(lambda v: ref.margin_loss(x0, labels, v, kept), beta0)
    assert np.abs(fx).max() > 0.05 and np.abs(fb).max() > 0.05
    np.testing.assert_allclose(gx, fx, atol=1e-7)
    np.testing.assert_allclose(gb, fb, atol=1e-7)


def test_beta_gradient_is_dense():
    """Like torch's beta[labels]: a dense [C] gradient, zero for classes without anchors."""
    beta = tf.Variable([1.2, 1.0, 0.5])
    with tf.GradientTape() as tape:
        loss = losses.margin_loss(tf.constant(X, tf.float32), tf.constant(LABELS), beta,
                                  tuple(tf.constant(v, tf.int32) for v in zip(BOTH, POS_ONLY)))
    grad = tape.gradient(loss, beta)
    assert isinstance(grad, tf.Tensor) and grad.shape == (3,)
    # both anchors have label 0; the two hinges of BOTH cancel, POS_ONLY gives -1; K = 2
    np.testing.assert_allclose(grad.numpy(), [-0.5, 0.0, 0.0], atol=1e-7)
