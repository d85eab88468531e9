"""Global pooling of the backbone's feature map, one descriptor per head: the registry of
--head_pooling, and the generalized-mean (GeM) layer (Radenovic et al. 2018).

DiVA pools once by averaging (algorithm.md 2.1). CGD (Jun et al. 2019) feeds each embedding from its own
global descriptor, SPoC (average), MAC (max) or GeM, and concatenates them. Keras is imported only
when a layer is built (the GeM class is defined on first use), so `ModelOptions` validates
names without loading TensorFlow. Layer names
are stable ("avgpool", "maxpool", "gempool") for lookups and weight files.
"""

from __future__ import annotations

import functools

from diva_tf.core.choices import lookup


def _avg(gem_p):
    import keras
    return keras.layers.GlobalAveragePooling2D(name="avgpool")


def _max(gem_p):
    import keras
    return keras.layers.GlobalMaxPooling2D(name="maxpool")


def _gem(gem_p):
    return gem_pooling_class()(gem_p, name="gempool")


POOLINGS = {"avg": _avg, "max": _max, "gem": _gem}


def global_pooling(kind: str, gem_p: float = 3.0):
    """The pooling layer for `kind` (a POOLINGS name)."""
    return lookup(POOLINGS, "head_pooling", kind, "pooling")(gem_p)


@functools.cache
def gem_pooling_class():
    """The GeM layer class, registered for Keras serialisation as diva_tf>GeneralizedMeanPooling."""
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

    return GeneralizedMeanPooling


def __getattr__(name):
    if name == "GeneralizedMeanPooling":
        return gem_pooling_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
