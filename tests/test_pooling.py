"""Per-head global pooling (--head_pooling): GeM against numpy, and the model wiring."""

import keras
import numpy as np
import pytest

from diva_tf.config import Config, ConfigError
from diva_tf.model.network import build_embedding_model
from diva_tf.model.pooling import GeneralizedMeanPooling
from diva_tf.model.pooling import global_pooling


def test_gem_matches_numpy_and_its_limits():
    x = np.random.RandomState(0).uniform(0, 3, (2, 4, 5, 3)).astype("float32")
    x[0, 0, 0, 0] = -1.0  # clamped to eps before the power
    p = 3.0
    want = np.mean(np.maximum(x, 1e-6) ** p, axis=(1, 2)) ** (1 / p)
    np.testing.assert_allclose(GeneralizedMeanPooling(p)(x), want, rtol=1e-5)
    xp = np.abs(x) + 0.1
    np.testing.assert_allclose(GeneralizedMeanPooling(1.0)(xp), xp.mean(axis=(1, 2)), rtol=1e-5)
    spike = np.zeros((1, 4, 5, 1), "float32")
    spike[0, 2, 3, 0] = 2.0  # one active cell out of 20: GeM = 2 * 20^(-1/p), towards max as p grows
    for p in (2.0, 8.0):
        np.testing.assert_allclose(GeneralizedMeanPooling(p)(spike), [[2.0 * 20 ** (-1 / p)]], rtol=1e-5)


def test_each_head_reads_its_own_pooling():
    cfg = Config(backbone="tiny", backbone_weights="none", embed_dim=8,
                 diva_features=["discriminative", "shared"], diva_rho_decorrelation=[],
                 head_pooling=["avg", "max"]).validate()
    model = build_embedding_model(cfg, cfg.seed)
    names = {layer.name for layer in model.layers}
    assert {"avgpool", "maxpool"} <= names and "gempool" not in names
    images = np.random.RandomState(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    fmap = keras.Model(model.input, model.get_layer("avgpool").input)(images).numpy()
    out = model(images)
    for head, pooled in (("discriminative", fmap.mean(axis=(1, 2))), ("shared", fmap.max(axis=(1, 2)))):
        kernel, bias = model.get_layer(f"head_{head}").get_weights()
        z = pooled @ kernel + bias
        np.testing.assert_allclose(out[head], z / np.linalg.norm(z, axis=1, keepdims=True), atol=1e-5)


def test_one_value_applies_to_every_head_and_bad_values_fail():
    cfg = Config(head_pooling=["gem"])
    assert cfg.poolings == ("gem",) * 4
    assert Config().poolings == ("avg",) * 4
    with pytest.raises(ConfigError, match="--head_pooling"):
        Config(head_pooling=["avg", "max"]).validate()
    with pytest.raises(ConfigError, match="--head_pooling"):
        Config(head_pooling=["median"]).validate()
    with pytest.raises(ValueError, match="--head_pooling=.median.: unknown pooling"):
        global_pooling("median")
