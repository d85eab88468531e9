"""Embedding model (algorithm.md 2): head init, normalisation, frozen BN, input normalisation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from diva_tf.model.backbones.preprocessing import Normalize
from diva_tf.config import Config
from diva_tf.model.network import build_embedding_model, head_variables


def _tiny(**kw):
    return Config(backbone="tiny", backbone_weights="none", **kw)


def test_outputs_are_unit_norm_heads_in_configured_order():
    cfg = _tiny(diva_features=["shared", "discriminative"], diva_rho_decorrelation=[1.0], embed_dim=16)
    model = build_embedding_model(cfg, cfg.seed)
    out = model(np.random.RandomState(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32"))
    assert list(out) == ["shared", "discriminative"]
    for v in out.values():
        assert v.shape == (3, 16)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_head_dims_give_each_head_its_own_dimension():
    cfg = _tiny(head_dims=[12, 8, 6, 4]).validate()
    out = build_embedding_model(cfg, cfg.seed)(np.zeros((2, 32, 32, 3), "float32"))
    assert {h: v.shape[1] for h, v in out.items()} == {
        "discriminative": 12, "selfsimilarity": 8, "shared": 6, "intra": 4}


def test_heads_use_pytorch_linear_init():
    cfg = _tiny(embed_dim=128)
    model = build_embedding_model(cfg, cfg.seed)
    bound = 1.0 / math.sqrt(64)  # tiny backbone: 64 pooled features
    kernels = [v.numpy() for v in head_variables(model) if v.name == "kernel"]
    biases = [v.numpy() for v in head_variables(model) if v.name == "bias"]
    assert len(kernels) == len(biases) == 4
    for w in kernels + biases:
        assert np.abs(w).max() <= bound
        # U(-b, b) has variance b^2/3; Glorot or zero biases would not.
        assert abs(w.var() - bound ** 2 / 3) < 0.25 * bound ** 2 / 3


def test_frozen_bn_keeps_statistics_but_trains_gamma_beta():
    """training=False (DiVA's frozen BN): moving stats fixed, gamma/beta move."""
    model = build_embedding_model(_tiny(embed_dim=8), seed=1)
    bn = model.get_layer("tiny").get_layer("bn0")
    before = [w.numpy().copy() for w in (bn.moving_mean, bn.moving_variance, bn.gamma, bn.beta)]
    x = np.random.RandomState(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    opt = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=False)["discriminative"][:, 0])
    grads = tape.gradient(loss, model.trainable_variables)
    pairs = [(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None]  # one head
    opt.apply([g for g, _ in pairs], [v for _, v in pairs])
    after = [w.numpy() for w in (bn.moving_mean, bn.moving_variance, bn.gamma, bn.beta)]
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert not np.allclose(before[2], after[2]) and not np.allclose(before[3], after[3])
    assert bn.gamma.trainable and bn.beta.trainable


@pytest.mark.parametrize("mode, ref", [
    ("caffe", lambda x: x[..., ::-1] - np.array([103.939, 116.779, 123.68])),
    ("torch", lambda x: (x / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])),
    ("tf", lambda x: x / 127.5 - 1),
    ("lite", lambda x: (x - 127) / 128),
    ("unit", lambda x: x / 255),
])
def test_normalize_modes(mode, ref):
    x = np.random.RandomState(2).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(Normalize(mode)(x), ref(x.astype(np.float64)), rtol=1e-5, atol=1e-4)


def test_unknown_backbone_and_missing_weights_file_are_clear():
    from diva_tf.model.backbones.registry import BackboneError, build_backbone

    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(BackboneError, match="no such file"):
        build_backbone("tiny", "/nonexistent/weights.h5")
