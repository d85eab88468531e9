"""Global pooling of the backbone's feature map, one descriptor per head.

DiVA pools once by averaging (spec 2.1). CGD (Jun et al. 2019) feeds each embedding from its own
global descriptor, SPoC (average), MAC (max) or GeM, and concatenates them; `--head_pooling` offers
that choice per head.
"""

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


def global_pooling(kind: str, gem_p: float = 3.0) -> keras.layers.Layer:
    """The pooling layer for `kind` (avg | max | gem); names are stable for lookups and weights."""
    if kind == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avgpool")
    if kind == "max":
        return keras.layers.GlobalMaxPooling2D(name="maxpool")
    if kind == "gem":
        return GeneralizedMeanPooling(gem_p, name="gempool")
    raise ValueError(f"unknown pooling {kind!r}: avg | max | gem")
