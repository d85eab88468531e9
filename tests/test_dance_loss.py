"""DaNCE (algorithm.md 4.5): distance-weighted MoCo loss, its weights and the FIFO key queue."""

import numpy as np
import pytest
import tensorflow as tf

import reference_losses as ref
from diva_tf.objectives import losses
from diva_tf.training.trainer import enqueue


def _batch(seed, b=6, m=18, dim=8):
    """Queries leaning towards +e1 and a queue holding -e1 (cut off for every query) and near-copies of
    two queries (distance < 0.5, clamped), so both cut-offs and the clamp matter."""
    rng = np.random.default_rng(seed)
    shift = np.zeros(dim)
    shift[0] = 1.5
    q = ref.normalize_rows(rng.normal(size=(b, dim)) + shift)
    k = ref.normalize_rows(q + 0.3 * rng.normal(size=(b, dim)))
    queue = ref.unit_rows(rng, m, dim)
    queue[0] = -np.eye(dim)[0]
    queue[1] = ref.normalize_rows(q[:1] + 0.05 * rng.normal(size=(1, dim)))[0]
    queue[2] = ref.normalize_rows(q[1:2] + 0.1 * rng.normal(size=(1, dim)))[0]
    return q, k, queue


@pytest.mark.parametrize("fixed", [False, True])
def test_weights_match_numpy(fixed):
    q, _, queue = _batch(0)
    w = losses.dance_weights(tf.constant(q @ queue.T), q.shape[1], fixed=fixed).numpy()
    want = ref.dance_weights(q, queue, fixed=fixed)
    np.testing.assert_allclose(w, want, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(w.sum(axis=1 if fixed else 0), 1.0)
    if not fixed:
        np.testing.assert_allclose(w[:, 0], 1.0 / len(q))  # fully cut-off column: clamp, then 1/B
    dist = np.sqrt(np.maximum(2 - 2 * q @ queue.T, 0))
    assert (dist > 1.4).any() and (dist < 0.5).any() and ((dist > 0.5) & (dist < 1.4)).any()


@pytest.mark.parametrize("fixed,weighted", [(False, True), (True, True), (False, False)])
@pytest.mark.parametrize("tau", [0.1, 0.01])
def test_loss_matches_numpy(fixed, weighted, tau):
    q, k, queue = _batch(1)
    got = losses.dance_loss(tf.constant(q), tf.constant(k), tf.constant(queue), tau,
                            fixed=fixed, weighted=weighted).numpy()
    want = ref.dance_loss(q, k, queue, tau, fixed=fixed, weighted=weighted)
    assert got == pytest.approx(want, rel=1e-10)


def test_variants_differ():
    q, k, queue = _batch(2)
    values = {(f, w): losses.dance_loss(*(tf.constant(v) for v in (q, k, queue)), 0.1, fixed=f,
                                        weighted=w).numpy()
              for f, w in [(False, True), (True, True), (False, False)]}
    assert len({round(float(v), 8) for v in values.values()}) == 3


def test_realistic_float32_dimension_128():
    rng = np.random.default_rng(3)
    q, k = ref.unit_rows(rng, 16, 128), ref.unit_rows(rng, 16, 128)
    queue = ref.unit_rows(rng, 64, 128)
    queue[:4] = ref.normalize_rows(q[:4] + 0.05 * rng.normal(size=(4, 128)))
    for fixed in (False, True):
        got = losses.dance_loss(*(tf.constant(v, tf.float32) for v in (q, k, queue)), 0.01, fixed=fixed)
        assert got.dtype == tf.float32
        assert got.numpy() == pytest.approx(ref.dance_loss(q, k, queue, 0.01, fixed=fixed), rel=2e-5)


def test_float32_fully_cut_off_queue_gives_uniform_weights_not_nan():
    """Every weight is clamped to the float32 denormal 2^-149 (which CPU TF flushes to zero)."""
    q = np.tile(np.eye(4)[:1], (3, 1))
    queue = ref.normalize_rows(-np.eye(4)[:2] + 0.3 * np.eye(4)[2:])
    w = losses.dance_weights(tf.constant(q @ queue.T, tf.float32), 4).numpy()
    np.testing.assert_allclose(w, 1.0 / 3)
    loss = losses.dance_loss(*(tf.constant(v, tf.float32) for v in (q, q, queue)), 1.0).numpy()
    assert np.isfinite(loss) and loss == pytest.approx(ref.dance_loss(q, q, queue, 1.0), rel=1e-6)


@pytest.mark.parametrize("fixed", [False, True])
def test_gradient_treats_weights_as_constants(fixed):
    q0, k, queue = _batch(4, b=4, m=10, dim=6)
    q = tf.Variable(q0)
    with tf.GradientTape() as tape:
        loss = losses.dance_loss(q, tf.constant(k), tf.constant(queue), 0.1, fixed=fixed)
    grad = tape.gradient(loss, q).numpy()
    frozen = ref.central_difference(lambda v: ref.dance_loss(v, k, queue, 0.1, fixed=fixed,
                                                             weight_queries=q0), q0)
    np.testing.assert_allclose(grad, frozen, atol=1e-7)
    through_weights = ref.central_difference(lambda v: ref.dance_loss(v, k, queue, 0.1, fixed=fixed), q0)
    assert np.abs(through_weights - frozen).max() > 1e-3


def test_weights_have_no_gradient_and_temperature_may_be_a_tensor():
    q, k, queue = (tf.constant(v) for v in _batch(5))
    s = tf.Variable(tf.matmul(q, queue, transpose_b=True))
    with tf.GradientTape() as tape:
        w = losses.dance_weights(s, 8)
    assert tape.gradient(w, s) is None
    a = losses.dance_loss(q, k, queue, tf.constant(0.05, tf.float64))
    assert a.numpy() == pytest.approx(losses.dance_loss(q, k, queue, 0.05).numpy(), rel=1e-12)


def test_enqueue_is_fifo_and_keeps_static_shape():
    queue = tf.constant(np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32))
    keys = tf.constant([[100.0, 100.0], [101.0, 101.0], [102.0, 102.0]])
    out = enqueue(queue, keys).numpy()
    np.testing.assert_array_equal(out[:, 0], [3, 4, 5, 6, 7, 8, 9, 100, 101, 102])
    var = tf.Variable(queue)
    step = tf.function(lambda k: var.assign(enqueue(var, k)))
    step(keys)
    step(keys + 10)
    np.testing.assert_array_equal(var.numpy()[:, 0], [6, 7, 8, 9, 100, 101, 102, 110, 111, 112])
    traced = tf.function(enqueue).get_concrete_function(
        tf.TensorSpec([10, 2], tf.float32), tf.TensorSpec([3, 2], tf.float32))
    assert traced.structured_outputs.shape == (10, 2)


def test_unknown_static_shapes_as_after_all_gather():
    q, k, queue = (tf.constant(v, tf.float32) for v in _batch(6))
    spec = [tf.TensorSpec([None, None], tf.float32)] * 3
    traced = tf.function(lambda a, b, c: losses.dance_loss(a, b, c, 0.1), input_signature=spec)
    assert traced(q, k, queue).numpy() == pytest.approx(losses.dance_loss(q, k, queue, 0.1).numpy(), rel=1e-6)
    fifo = tf.function(enqueue, input_signature=spec[:2])
    np.testing.assert_array_equal(fifo(queue, k).numpy(), enqueue(queue, k).numpy())
