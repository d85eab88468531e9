"""Fused inference BatchNormalization: same numbers and gradients as the closed form, same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from diva_tf.model.backbones import build_backbone
from diva_tf.model.backbones.batchnorm import FusedInferenceBatchNormalization, fuse_inference_batchnorm

EPS = 1e-3


def _stats(channels, seed=0):
    rng = np.random.RandomState(seed)
    return {"gamma": rng.uniform(0.5, 2.0, channels), "beta": rng.normal(size=channels),
            "mean": rng.normal(size=channels), "var": rng.uniform(0.2, 3.0, channels)}


def _layer(channels, stats, cls=FusedInferenceBatchNormalization, **kw):
    layer = cls(epsilon=EPS, **kw)
    layer.build((None, 4, 4, channels))
    weights = ([stats["gamma"]] if layer.scale else []) + ([stats["beta"]] if layer.center else [])
    layer.set_weights([w.astype("float32") for w in weights + [stats["mean"], stats["var"]]])
    return layer


def _reference(x, s, scale=True, center=True):
    y = (x - s["mean"]) / np.sqrt(s["var"] + EPS)
    return y * (s["gamma"] if scale else 1.0) + (s["beta"] if center else 0.0)


@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False)])
def test_inference_output_matches_closed_form(scale, center):
    s = _stats(3)
    x = np.random.RandomState(1).normal(size=(2, 5, 4, 3)).astype("float32")
    y = _layer(3, s, scale=scale, center=center)(x, training=False)
    np.testing.assert_allclose(y.numpy(), _reference(x, s, scale, center), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("jit", [False, True])
def test_gradients_match_closed_form(jit):
    s = _stats(3)
    x = tf.constant(np.random.RandomState(2).normal(size=(2, 5, 4, 3)), tf.float32)
    w = np.random.RandomState(3).normal(size=(2, 5, 4, 3)).astype("float32")
    layer = _layer(3, s)

    @tf.function(jit_compile=jit)
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=False) * w)
        return tape.gradient(loss, [x, layer.gamma, layer.beta])

    dx, dgamma, dbeta = grads(x)
    inv = 1.0 / np.sqrt(s["var"] + EPS)
    np.testing.assert_allclose(dx.numpy(), w * s["gamma"] * inv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dgamma.numpy(), (w * (x.numpy() - s["mean"]) * inv).sum((0, 1, 2)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta.numpy(), w.sum((0, 1, 2)), rtol=1e-5, atol=1e-4)


def test_training_mode_is_keras_batchnorm():
    s = _stats(3)
    x = np.random.RandomState(4).normal(2.0, 3.0, size=(4, 3, 3, 3)).astype("float32")
    fused, plain = _layer(3, s), _layer(3, s, cls=keras.layers.BatchNormalization)
    np.testing.assert_allclose(fused(x, training=True).numpy(), plain(x, training=True).numpy(), atol=1e-6)
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), atol=1e-7)
    assert not np.allclose(fused.moving_mean.numpy(), s["mean"])


def test_bfloat16_activations_with_float32_statistics():
    s = _stats(8)
    x = np.random.RandomState(5).normal(size=(2, 3, 3, 8)).astype("float32")
    layer = _layer(8, s, dtype="mixed_bfloat16")
    y = layer(tf.cast(x, tf.bfloat16), training=False)
    assert y.dtype == tf.bfloat16
    x_rounded = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), _reference(x_rounded, s), rtol=1e-2, atol=2e-2)


def test_fuse_switches_nested_layers_and_keeps_weights():
    inner_in = keras.Input((None, None, 3))
    inner = keras.Model(inner_in, keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inner_in)))
    outer_in = keras.Input((None, None, 3))
    model = keras.Model(outer_in, keras.layers.BatchNormalization()(inner(outer_in)))
    for v in model.weights:
        v.assign(np.random.RandomState(6).uniform(0.5, 1.5, v.shape).astype("float32"))
    x = np.random.RandomState(7).normal(size=(2, 6, 6, 3)).astype("float32")
    before, weights = model(x, training=False).numpy(), model.get_weights()

    assert fuse_inference_batchnorm(model) is model
    bns = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 2 and all(type(b) is FusedInferenceBatchNormalization for b in bns)
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model(x, training=False).numpy(), before, rtol=1e-5, atol=1e-5)
    graph = tf.function(lambda t: model(t, training=False)).get_concrete_function(
        tf.TensorSpec([2, 6, 6, 3])).graph
    op_types = {op.type for f in [graph, *[g.graph for g in graph._functions.values()]]
                for op in f.get_operations()}
    assert "FusedBatchNormV3" in op_types


def test_keras_file_round_trip(tmp_path):
    from diva_tf.config import Config
    from diva_tf.model.network import build_embedding_model

    model = build_embedding_model(Config(backbone="tiny", backbone_weights="none", embed_dim=8), seed=1)
    x = np.random.RandomState(8).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for name, value in model(x, training=False).items():
        np.testing.assert_allclose(loaded(x, training=False)[name].numpy(), value.numpy(), atol=1e-6)


def test_backbones_are_built_fused():
    net, _ = build_backbone("tiny", "none")
    kinds = {type(layer) for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert kinds == {FusedInferenceBatchNormalization}
