"""Backbones by name: a feature extractor (images in 0..255 -> pooled features) and its input
normalisation, which lives with the backbone so the data pipeline stays backbone-agnostic."""

from diva_tf.model.backbones.registry import BACKBONES, BackboneSpec, build_backbone, feature_dim

__all__ = ["BACKBONES", "BackboneSpec", "build_backbone", "feature_dim"]
