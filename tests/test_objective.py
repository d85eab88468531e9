"""The summed DiVA objective (algorithm.md 4.7): which terms exist for which heads, and their weights."""

import numpy as np
import pytest
import tensorflow as tf

from diva_tf.config import Config
from diva_tf.objectives.objective import DiVAObjective


def _inputs(heads, b=8, d=8, m=16, seed=0):
    rng = np.random.RandomState(seed)
    unit = lambda *s: tf.math.l2_normalize(tf.constant(rng.randn(*s), tf.float32), -1)  # noqa: E731
    embs = {h: unit(b, d) for h in heads}
    return embs, tf.constant(np.repeat(np.arange(b // 2), 2), tf.int32), unit(b, d), unit(m, d)


def _objective(**kw):
    cfg = Config(embed_dim=8, diva_decorrnet_dim=16, **kw).validate()
    obj = DiVAObjective(cfg.dims, 4, cfg, cfg.seed)
    obj.build()
    return obj, cfg


def test_terms_scale_with_their_alpha_and_sum_to_total():
    heads = ["discriminative", "selfsimilarity", "shared", "intra"]
    embs, labels, keys, queue = _inputs(heads)
    seed = tf.constant([1, 2], tf.int64)
    obj, _ = _objective()
    total, terms = obj(embs, labels, seed, keys, queue)
    assert set(terms) == {"discriminative", "selfsimilarity", "shared", "intra", "decorrelation"}
    assert float(total) == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-6)
    obj2, _ = _objective(diva_alpha_ssl=0.6, diva_alpha_shared=0.9, diva_alpha_intra=0.0)
    obj2.set_weights(obj.get_weights())
    _, terms2 = obj2(embs, labels, seed, keys, queue)
    assert float(terms2["selfsimilarity"]) == pytest.approx(2 * float(terms["selfsimilarity"]), rel=1e-5)
    assert float(terms2["shared"]) == pytest.approx(3 * float(terms["shared"]), rel=1e-5)
    assert float(terms2["intra"]) == 0.0
    assert float(terms2["discriminative"]) == pytest.approx(float(terms["discriminative"]), rel=1e-6)


def test_rho_scales_each_direction():
    heads = ["discriminative", "selfsimilarity", "shared", "intra"]
    embs, labels, keys, queue = _inputs(heads, seed=1)
    seed = tf.constant([3, 4], tf.int64)
    a, _ = _objective(diva_rho_decorrelation=[1.0, 1.0, 1.0])
    b, _ = _objective(diva_rho_decorrelation=[2.0, 2.0, 2.0])
    b.set_weights(a.get_weights())
    ta = a(embs, labels, seed, keys, queue)[1]["decorrelation"]
    tb = b(embs, labels, seed, keys, queue)[1]["decorrelation"]
    assert float(tb) == pytest.approx(2 * float(ta), rel=1e-5) and float(ta) < 0


@pytest.mark.parametrize("loss", ["triplet", "multisimilarity", "proxy"])
def test_alternative_discriminative_losses_and_owned_variables(loss):
    embs, labels, _, _ = _inputs(["discriminative"])
    obj, _ = _objective(loss=loss, diva_features=["discriminative"], diva_rho_decorrelation=[])
    with tf.GradientTape() as tape:
        total, terms = obj(embs, labels, tf.constant([0, 0], tf.int64))
    assert set(terms) == {"discriminative"} and np.isfinite(float(total))
    groups = obj.variable_groups()
    assert groups["beta"] == [] and groups["regressor"] == []
    if loss == "proxy":
        (g,) = tape.gradient(total, groups["proxy"])
        assert g is not None and float(tf.reduce_sum(tf.abs(g))) > 0
