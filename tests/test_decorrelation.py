"""Decorrelation by adversarial separation (algorithm.md 4.6) and the combined DiVA objective (algorithm.md 4.7)."""

import math

import numpy as np
import pytest
import tensorflow as tf

import reference_losses as ref
from diva_tf.objectives import losses, miners
from diva_tf.objectives.ops import gradient_reversal, l2_normalize

DIM, HIDDEN = 6, 10


def _regressor(seed=0):
    reg = losses.build_regressor(DIM, HIDDEN, name="xi", seed=seed, dtype="float64")
    reg.build((None, DIM))
    return reg


def _weights(reg):
    return [v.numpy() for v in reg.trainable_variables]  # kernel1, bias1, kernel2, bias2


def _pair(seed, b=5):
    rng = np.random.default_rng(seed)
    return ref.unit_rows(rng, b, DIM), ref.unit_rows(rng, b, DIM)


def test_gradient_reversal_is_identity_forward_and_negates_backward():
    x = tf.Variable([[1.0, -2.0, 3.0]])
    for fn in (gradient_reversal, tf.function(gradient_reversal)):
        with tf.GradientTape() as tape:
            y = fn(x)
            loss = tf.reduce_sum(y * tf.constant([[2.0, 5.0, -1.0]]))
        np.testing.assert_array_equal(y.numpy(), x.numpy())
        np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), [[-2.0, -5.0, 1.0]])


def test_l2_normalize_matches_torch_semantics():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-7, 0.0]])
    np.testing.assert_allclose(l2_normalize(tf.constant(x)).numpy(), ref.normalize_rows(x))


def test_regressor_architecture_and_pytorch_init():
    reg = losses.build_regressor(128, 512, name="regressor_shared")
    reg.build((None, 128))
    assert reg.name == "regressor_shared"
    kernel1, bias1, kernel2, bias2 = _weights(reg)
    assert kernel1.shape == (128, 512) and bias1.shape == (512,)
    assert kernel2.shape == (512, 128) and bias2.shape == (128,)
    for w, fan_in in ((kernel1, 128), (bias1, 128), (kernel2, 512), (bias2, 512)):
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(w).max() <= bound and abs(w.var() - bound ** 2 / 3) < 0.3 * bound ** 2 / 3
    x = np.random.default_rng(0).normal(size=(3, 128)).astype(np.float32)
    want = np.maximum(x @ kernel1 + bias1, 0) @ kernel2 + bias2
    np.testing.assert_allclose(reg(x).numpy(), want, rtol=1e-4, atol=1e-5)


def test_value_matches_numpy():
    s, t = _pair(0)
    reg = _regressor()
    got = losses.decorrelation_loss(tf.constant(s), tf.constant(t), reg, 1500.0).numpy()
    assert got == pytest.approx(ref.decorrelation_loss(s, t, _weights(reg), 1500.0), rel=1e-12)
    assert got < 0


def test_unequal_head_dims_regress_source_onto_target_dimension():
    """--head_dims: xi maps the source head's dimension to the target's; C averages over the target's."""
    rng = np.random.default_rng(4)
    s, t = ref.unit_rows(rng, 5, 6), ref.unit_rows(rng, 5, 3)
    reg = losses.build_regressor(6, HIDDEN, name="xi", seed=1, dtype="float64", out_dim=3)
    reg.build((None, 6))
    assert [w.shape for w in _weights(reg)] == [(6, HIDDEN), (HIDDEN,), (HIDDEN, 3), (3,)]
    got = losses.decorrelation_loss(tf.constant(s), tf.constant(t), reg, 150.0).numpy()
    assert got == pytest.approx(ref.decorrelation_loss(s, t, _weights(reg), 150.0), rel=1e-12)


def test_reversal_flips_exactly_the_embedding_gradients():
    """Embeddings get minus the gradient of -rho*C (they minimise C); the regressor gets it unchanged
    (it maximises C). Both are checked against finite differences of the numpy expression."""
    s0, t0 = _pair(1)
    reg, rho = _regressor(seed=3), 7.0
    s, t = tf.Variable(s0), tf.Variable(t0)
    with tf.GradientTape(persistent=True) as tape:
        reversed_loss = losses.decorrelation_loss(s, t, reg, rho)
        plain_loss = -rho * losses.correlation(l2_normalize(s), l2_normalize(t), reg)
    params = reg.trainable_variables
    g_rev = tape.gradient(reversed_loss, [s, t] + params)
    g_plain = tape.gradient(plain_loss, [s, t] + params)
    assert reversed_loss.numpy() == pytest.approx(plain_loss.numpy(), rel=1e-14)
    for r, p in zip(g_rev[:2], g_plain[:2]):
        np.testing.assert_allclose(r.numpy(), -p.numpy(), rtol=1e-12)
    for r, p in zip(g_rev[2:], g_plain[2:]):
        np.testing.assert_allclose(r.numpy(), p.numpy(), rtol=1e-12)

    w = _weights(reg)
    fd_s = ref.central_difference(lambda v: ref.decorrelation_loss(v, t0, w, rho), s0)
    fd_t = ref.central_difference(lambda v: ref.decorrelation_loss(s0, v, w, rho), t0)
    np.testing.assert_allclose(g_rev[0].numpy(), -fd_s, atol=1e-7)
    np.testing.assert_allclose(g_rev[1].numpy(), -fd_t, atol=1e-7)
    assert np.abs(fd_s).max() > 1e-3 and np.abs(fd_t).max() > 1e-3
    for k in range(4):
        def f(v, k=k):
            return ref.decorrelation_loss(s0, t0, w[:k] + [v] + w[k + 1:], rho)
        np.testing.assert_allclose(g_rev[2 + k].numpy(), ref.central_difference(f, w[k]), atol=1e-7)


def test_directions_loss_sums_the_directions_of_its_rhos():
    rng = np.random.default_rng(2)
    emb = {k: tf.constant(ref.unit_rows(rng, 4, DIM)) for k in ("disc", "ssl", "shared", "intra")}
    dirs = [("ssl", "disc"), ("shared", "disc"), ("intra", "disc")]
    regs = {d: _regressor(seed=10 * i) for i, d in enumerate(dirs)}
    weights = [_weights(regs[d]) for d in dirs]
    want = sum(ref.decorrelation_loss(emb[s].numpy(), emb[t].numpy(), w, r)
               for (s, t), w, r in zip(dirs, weights, [1.0, 2.0, 3.0]))
    total = losses.directions_loss(emb, regs, dict(zip(dirs, [1.0, 2.0, 3.0]))).numpy()
    assert total == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("jit", [False, True])
def test_combined_objective_forward_backward_in_tf_function(jit):
    """All four tasks plus three decorrelation terms on four unit-norm heads (algorithm.md 4.7)."""
    b, dim, m, classes = 8, 16, 24, 4
    rng = np.random.default_rng(4)
    heads = ("discriminative", "selfsimilarity", "shared", "intra")
    raw = {h: tf.Variable(rng.normal(size=(b, dim)).astype(np.float32)) for h in heads}
    keys = tf.constant(ref.unit_rows(rng, b, dim), tf.float32)
    queue = tf.constant(ref.unit_rows(rng, m, dim), tf.float32)
    labels = tf.constant(np.repeat(np.arange(classes), 2), tf.int32)
    betas = {t: tf.Variable(tf.fill([classes], 1.2)) for t in ("discriminative", "shared", "intra")}
    dirs = [(h, "discriminative") for h in ("selfsimilarity", "shared", "intra")]
    regs = {d: losses.build_regressor(dim, 32, name=f"xi_{d[0]}") for d in dirs}
    for r in regs.values():
        r.build((None, dim))
    variables = (list(raw.values()) + list(betas.values())
                 + [v for r in regs.values() for v in r.trainable_variables])

    @tf.function(jit_compile=jit)
    def step(seed):
        with tf.GradientTape() as tape:
            emb = {h: l2_normalize(v) for h, v in raw.items()}
            seeds = tf.random.experimental.stateless_split(seed, 3)
            disc_triplets = miners.distance_weighted_triplets(emb["discriminative"], labels, seeds[0])
            disc = losses.margin_loss(emb["discriminative"], labels, betas["discriminative"], disc_triplets)
            shared = losses.margin_loss(emb["shared"], labels, betas["shared"],
                                        miners.shared_permuted_triplets(emb["shared"], labels, seeds[1]))
            intra = losses.margin_loss(emb["intra"], labels, betas["intra"],
                                       miners.intra_random_triplets(labels, seeds[2]))
            ssl = losses.dance_loss(emb["selfsimilarity"], keys, queue, 0.01)
            sep = losses.directions_loss(emb, regs, dict.fromkeys(dirs, 1500.0))
            total = disc + 0.3 * (ssl + shared + intra) + sep
        return total, tape.gradient(total, variables)

    total, grads = step(tf.constant([0, 1], tf.int64))
    assert np.isfinite(total.numpy())
    for v, g in zip(variables, grads):
        assert g is not None, v.name
        assert np.all(np.isfinite(tf.convert_to_tensor(g).numpy())), v.name
    assert all(np.abs(tf.convert_to_tensor(g).numpy()).sum() > 0 for g in grads[:4])
