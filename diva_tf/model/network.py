"""The DiVA embedding network (algorithm.md 2): backbone -> global average pooling -> one linear head per
task, each L2-normalised. A Keras functional model taking float RGB images in 0..255.

`--head_pooling` may give a head max or GeM pooling instead (CGD-style descriptors); each kind of
pooling is computed once and shared by the heads that use it."""

from __future__ import annotations

import keras

from diva_tf.model.backbones import build_backbone, feature_dim
from diva_tf.model.backbones.preprocessing import Normalize
from diva_tf.model.initializers import torch_dense
from diva_tf.model.options import ModelOptions
from diva_tf.model.pooling import global_pooling


def build_embedding_model(options: ModelOptions, seed: int | None = None,
                          weights: str | None = None, name: str = "diva") -> keras.Model:
    """Images [n, H, W, 3] in 0..255 -> {head: unit-norm [n, options.dims[head]]} for each head
    of options.diva_features.

    `seed` seeds the heads' initialisation (None: Keras's global seed); `weights` overrides
    options.backbone_weights (e.g. 'none' when weights are restored afterwards). Heads use
    PyTorch's Linear init (algorithm.md 2.2), not Keras's Glorot/zeros. Frozen BN is a property of how the
    model is called (training=False; Keras 3's `trainable = False` would freeze gamma/beta too), not of the graph.
    """
    backbone, mode = build_backbone(options.backbone,
                                    options.backbone_weights if weights is None else weights)
    images = keras.Input((None, None, 3), name="images")
    x = Normalize(mode, name="normalize")(images)
    x = backbone(x)
    pooled = {kind: global_pooling(kind, options.gem_p)(x)
              for kind in dict.fromkeys(options.poolings)}
    fan_in = feature_dim(options.backbone)
    outputs = {}
    for i, (head, kind) in enumerate(zip(options.diva_features, options.poolings)):
        head_seed = None if seed is None else seed * 101 + 2 * i
        z = torch_dense(options.dims[head], fan_in, name=f"head_{head}", seed=head_seed,
                        dtype="float32")(pooled[kind])
        outputs[head] = keras.layers.UnitNormalization(axis=-1, name=head, dtype="float32")(z)
    return keras.Model(images, outputs, name=name)


def head_variables(model: keras.Model) -> list:
    """The heads' kernels and biases (everything after the pooled features)."""
    return [v for layer in model.layers if layer.name.startswith("head_") for v in layer.trainable_variables]
