"""BatchNormalization as DiVA trains it: inference mode as one fused op, and synchronised
statistics when BN trains on several replicas.

Keras computes inference BN as `x * a + b` (two passes over the activation, and under mixed
precision a cast to float32 and back); its gradient is a Mul plus two Sum reductions. DiVA calls
every network with training=False (frozen BN, algorithm.md 2.1; the key encoder and embedding always), so
this is on every layer of every step. `FusedBatchNormV3(is_training=False)` does the same
arithmetic in one op, has a fused gradient, and takes bfloat16/float16 activations with float32
statistics. Measured in `benchmarks/throughput.py --fused_bn` (README, Performance).
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="diva_tf")
class FusedInferenceBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose inference path on 4-D channels-last input is FusedBatchNormV3.

    Training mode, masks and other ranks or axes fall back to Keras's implementation. Variables,
    config and weight files are exactly those of `keras.layers.BatchNormalization`.
    """

    def call(self, inputs, training=None, mask=None):
        if ((training and self.trainable) or mask is not None or len(inputs.shape) != 4
                or self.axis not in (-1, 3) or self.renorm):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones([channels], tf.float32)
        offset = self.beta if self.center else tf.zeros([channels], tf.float32)
        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, tf.cast(scale, tf.float32), tf.cast(offset, tf.float32),
            mean=tf.cast(self.moving_mean, tf.float32), variance=tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon, is_training=False)
        return tf.cast(y, self.compute_dtype)


def fuse_inference_batchnorm(model: keras.Model) -> keras.Model:
    """Switch every BatchNormalization layer of `model` (nested ones included) to the fused
    inference path, in place; returns `model`. Variables and weights are untouched, so weight files
    and checkpoints stay interchangeable with the unswitched model."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer) is keras.layers.BatchNormalization:
            layer.__class__ = FusedInferenceBatchNormalization
    return model


def synchronize_batchnorm(model: keras.Model) -> keras.Model:
    """Make every BatchNormalization layer of `model` normalise with the statistics of the global
    batch across replicas (Keras's `synchronized=True`), in place; returns `model`. With several
    replicas and BN in training mode this gives one device's forward pass on the whole batch, and
    every replica the same moving statistics. Variables and weight files are unchanged."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
    return model
