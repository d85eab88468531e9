"""Training diagnostics (DaNCE logit statistics, decorrelation C) and the beyond-DiVA auxiliary
discriminative loss, against float64 references."""

import numpy as np
import pytest
import tensorflow as tf

import reference_losses as ref
from diva_tf.objectives import diagnostics, miners
from diva_tf.config import Config
from diva_tf.objectives.objective import DiVAObjective

HEADS = ["discriminative", "selfsimilarity", "shared", "intra"]


def _unit(rng, *shape):
    return ref.normalize_rows(rng.normal(size=shape))


@pytest.mark.parametrize("tau, fixed", [(0.01, False), (0.1, True)])
def test_dance_statistics_match_numpy(tau, fixed):
    rng = np.random.default_rng(0)
    q, queue = _unit(rng, 6, 8), _unit(rng, 12, 8)
    k = ref.normalize_rows(q + 0.2 * rng.normal(size=q.shape))
    k[0] = q[0]  # an exact positive: its row loss is ~0 at tau 0.01
    k[1] = -q[1]  # an opposite one: a large loss
    w = ref.dance_weights(q, queue, fixed=fixed)
    pos = np.sum(q * k, axis=1) / tau
    neg = w * (q @ queue.T) / tau
    logits = np.concatenate([pos[:, None], neg], axis=1)
    rows = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1) - pos
    got = diagnostics.dance_statistics(tf.constant(q, tf.float32), tf.constant(k, tf.float32),
                                       tf.constant(queue, tf.float32), tau, 0.5, 1.4, fixed, True)
    assert float(got["dance_positive_logit"]) == pytest.approx(pos.mean(), rel=1e-4)
    assert float(got["dance_negative_logit"]) == pytest.approx(neg.mean(), rel=1e-3, abs=1e-4)
    assert float(got["dance_max_negative_logit"]) == pytest.approx(neg.max(1).mean(), rel=1e-4)
    assert float(got["dance_zero_loss_fraction"]) == pytest.approx(np.mean(rows < 1e-3))
    if tau == 0.01:
        assert 0 < float(got["dance_zero_loss_fraction"]) < 1


def _objective(**kw):
    cfg = Config(embed_dim=8, diva_decorrnet_dim=16, **kw).validate()
    obj = DiVAObjective(cfg.dims, 4, cfg, cfg.seed)
    obj.build()
    return obj


def _inputs(seed=0, b=8, d=8, m=16):
    rng = np.random.default_rng(seed)
    embs = {h: tf.constant(_unit(rng, b, d), tf.float32) for h in HEADS}
    labels = tf.constant(np.repeat(np.arange(b // 2), 2), tf.int32)
    return embs, labels, tf.constant(_unit(rng, b, d), tf.float32), tf.constant(_unit(rng, m, d), tf.float32)


def test_statistics_correlation_is_the_regressor_c_of_each_direction():
    obj = _objective()
    embs, _, keys, queue = _inputs()
    stats = obj.statistics(embs, keys, queue)
    assert set(stats) == set(obj.log_names()) - set(HEADS) - {"decorrelation"}
    for src in ("selfsimilarity", "shared", "intra"):
        dense = [layer for layer in obj.regressors[f"{src}-discriminative"].layers if layer.weights]
        weights = [w.numpy().astype(np.float64) for layer in dense for w in layer.weights]
        want = ref.correlation(embs[src].numpy().astype(np.float64),
                               embs["discriminative"].numpy().astype(np.float64), weights)
        assert float(stats[f"correlation_{src}_discriminative"]) == pytest.approx(want, rel=1e-4)


def test_aux_discriminative_adds_a_weighted_class_margin_loss_per_auxiliary_head():
    embs, labels, keys, queue = _inputs(seed=1)
    seed = tf.constant([5, 6], tf.int64)
    plain = _objective()
    extra = _objective(diva_aux_discriminative=0.5)
    assert extra.aux_disc_tasks == ["selfsimilarity_disc", "shared_disc", "intra_disc"]
    _, base_terms = plain(embs, labels, seed, keys, queue)
    total, terms = extra(embs, labels, seed, keys, queue)
    for h in ("discriminative", "selfsimilarity", "shared", "intra"):
        assert float(terms[h]) == pytest.approx(float(base_terms[h]), rel=1e-6)
    for k, head in enumerate(["selfsimilarity", "shared", "intra"]):
        sub_seed = seed + tf.constant([0, 1_000_003], tf.int64) * (4 + k)
        a, p, n, valid = (t.numpy() for t in miners.distance_weighted_triplets(embs[head], labels, sub_seed))
        assert valid.all()
        want = ref.margin_loss(embs[head].numpy(), labels.numpy(), np.full(4, 1.2), list(zip(a, p, n)))
        assert float(terms[f"{head}_disc"]) == pytest.approx(0.5 * want, rel=1e-5)
    assert float(total) == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-6)
    assert len(extra.variable_groups()["beta"]) == 6


def test_combined_loss_is_a_class_margin_loss_on_the_normalised_concatenation():
    embs, labels, keys, queue = _inputs(seed=2)
    seed = tf.constant([7, 8], tf.int64)
    plain = _objective()
    extra = _objective(diva_combined_loss=0.7)
    assert extra.log_names()[:5] == HEADS + ["combined"]
    _, base_terms = plain(embs, labels, seed, keys, queue)
    total, terms = extra(embs, labels, seed, keys, queue)
    for h in HEADS:
        assert float(terms[h]) == pytest.approx(float(base_terms[h]), rel=1e-6)
    # Four unit-norm heads concatenated: each block of the combined embedding has norm 1/2.
    combined = np.concatenate([embs[h].numpy().astype(np.float64) for h in HEADS], axis=1) / 2.0
    sub_seed = seed + tf.constant([0, 1_000_003], tf.int64) * 7
    a, p, n, valid = (t.numpy() for t in miners.distance_weighted_triplets(
        tf.constant(combined, tf.float32), labels, sub_seed))
    assert valid.all()
    want = ref.margin_loss(combined, labels.numpy(), np.full(4, 1.2), list(zip(a, p, n)))
    assert float(terms["combined"]) == pytest.approx(0.7 * want, rel=1e-5)
    assert float(total) == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-6)
    assert len(extra.variable_groups()["beta"]) == 4


def test_combined_loss_needs_several_heads():
    from diva_tf.config import ConfigError
    with pytest.raises(ConfigError, match="--diva_combined_loss needs at least two heads"):
        Config(diva_features=["discriminative"], diva_rho_decorrelation=[],
               diva_combined_loss=1.0).validate()
    with pytest.raises(ConfigError, match="--diva_combined_loss must be >= 0"):
        Config(diva_combined_loss=-1.0).validate()
