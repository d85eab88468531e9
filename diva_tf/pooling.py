"""Global pooling of the backbone's feature map, one descriptor per head: the registry of
--head_pooling.

DiVA pools once by averaging (spec 2.1). CGD (Jun et al. 2019) feeds each embedding from its own
global descriptor, SPoC (average), MAC (max) or GeM, and concatenates them. Keras is imported only
when a layer is built, so `diva_tf.config` validates names without loading TensorFlow. Layer names
are stable ("avgpool", "maxpool", "gempool") for lookups and weight files.
"""

from __future__ import annotations

from diva_tf.choices import lookup


def _avg(gem_p):
    import keras
    return keras.layers.GlobalAveragePooling2D(name="avgpool")


def _max(gem_p):
    import keras
    return keras.layers.GlobalMaxPooling2D(name="maxpool")


def _gem(gem_p):
    from diva_tf.gem_pooling import GeneralizedMeanPooling
    return GeneralizedMeanPooling(gem_p, name="gempool")


POOLINGS = {"avg": _avg, "max": _max, "gem": _gem}


def global_pooling(kind: str, gem_p: float = 3.0):
    """The pooling layer for `kind` (a POOLINGS name)."""
    return lookup(POOLINGS, "head_pooling", kind, "pooling")(gem_p)
