"""The model option group: the heads (which, their sizes and pooling) and the backbone (which, its
weights, frozen BatchNorm); `build_embedding_model` builds the network from it."""

from __future__ import annotations

from dataclasses import dataclass

from diva_tf.core.errors import ConfigError
from diva_tf.core.options import POSITIVE, Options, check_choices, check_ranges, option, require
from diva_tf.model.backbones.registry import BACKBONES, BackboneError, weights_source
from diva_tf.model.pooling import POOLINGS

HEAD_NAMES = ("discriminative", "selfsimilarity", "shared", "intra")


@dataclass
class ModelOptions(Options):
    """Backbone -> global pooling -> one L2-normalised linear head per task (algorithm.md 2)."""

    backbone: str = option("resnet50", " | ".join(BACKBONES), choices=(BACKBONES, "backbone"))
    backbone_weights: str = option("imagenet", "'imagenet', 'none', or a path to a weights file.")
    frozen_bn: bool = option(True, "Freeze BN statistics (gamma/beta stay trainable), algorithm.md 2.1.")
    embed_dim: int = option(128, "Dimension of each head (unless --head_dims).", POSITIVE)
    head_dims: list = option([], "Dimension per head, in --diva_features order (default "
                             "--embed_dim for every head; beyond DiVA: e.g. 256,128,64,64 keeps "
                             "the 512-d total but gives the discriminative head more).", POSITIVE)
    diva_features: list = option(list(HEAD_NAMES), "Heads to build, in order (1 to 4 of "
                                 + ", ".join(HEAD_NAMES) + "). Original default is discriminative "
                                 "only; this tool defaults to DiVA's four.")
    head_pooling: list = option([], "Global pooling per head, in --diva_features order, or one "
                                "value for all: " + " | ".join(POOLINGS) + " (default avg, as "
                                "DiVA; max/gem give CGD-style multiple global descriptors).")
    gem_p: float = option(3.0, "Exponent p of generalized-mean (gem) pooling.", POSITIVE)

    @property
    def poolings(self) -> tuple:
        """Pooling of each configured head (avg unless --head_pooling says otherwise)."""
        if not self.head_pooling:
            return ("avg",) * len(self.diva_features)
        if len(self.head_pooling) == 1:
            return tuple(self.head_pooling) * len(self.diva_features)
        return tuple(self.head_pooling)

    @property
    def dims(self) -> dict:
        """Head name -> its embedding dimension (--head_dims, else --embed_dim), in head order."""
        sizes = self.head_dims or [self.embed_dim] * len(self.diva_features)
        return {h: int(d) for h, d in zip(self.diva_features, sizes)}

    def validate(self) -> "ModelOptions":
        check_choices(self, ModelOptions)
        feats = list(self.diva_features)
        require(1 <= len(feats) <= 4 and len(set(feats)) == len(feats)
                and all(f in HEAD_NAMES for f in feats),
                f"--diva_features={','.join(feats)}: 1 to 4 distinct names out of {HEAD_NAMES}")
        require(len(self.head_dims) in (0, len(feats)) and all(int(d) > 0 for d in self.head_dims),
                f"--head_dims={','.join(map(str, self.head_dims))}: one positive dimension per "
                f"head ({len(feats)}: {','.join(feats)})")
        check_ranges(self, ModelOptions)
        require(len(self.head_pooling) in (0, 1, len(feats))
                and all(p in POOLINGS for p in self.head_pooling),
                f"--head_pooling={','.join(self.head_pooling)}: one value or one per head "
                f"({len(feats)}) out of {', '.join(POOLINGS)}")
        try:
            weights_source(self.backbone_weights)
        except BackboneError as e:
            raise ConfigError(str(e)) from None
        return self
