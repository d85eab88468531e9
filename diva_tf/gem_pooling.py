"""Generalized-mean (GeM) global pooling, a serialisable Keras layer (Radenovic et al. 2018)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="diva_tf")
class GeneralizedMeanPooling(keras.layers.Layer):
    """GeM: (mean over H, W of max(x, eps)^p)^(1/p) per channel; p = 1 is average, p -> inf max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.p, self.eps = float(p), float(eps)

    def call(self, x):
        x = ops.cast(x, "float32")
        pooled = ops.mean(ops.power(ops.maximum(x, self.eps), self.p), axis=(1, 2))
        return ops.cast(ops.power(pooled, 1.0 / self.p), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "p": self.p, "eps": self.eps}
