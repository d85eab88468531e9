"""DiVA's training objectives (spec 4) and alternative discriminative losses: pure tensor functions."""

from diva_tf.losses.dance import dance_logits, dance_loss, dance_row_losses, dance_weights, enqueue
from diva_tf.losses.decorrelation import build_regressor, correlation, decorrelation_loss, directions_loss
from diva_tf.losses.margin import margin_loss
from diva_tf.losses.multisimilarity import multi_similarity_loss
from diva_tf.losses.proxy import make_proxies, proxy_softmax_loss
from diva_tf.losses.triplet import triplet_semihard_loss

DISCRIMINATIVE_LOSSES = {
    "triplet": triplet_semihard_loss,
    "multisimilarity": multi_similarity_loss,
    "proxy": proxy_softmax_loss,
}

__all__ = [
    "DISCRIMINATIVE_LOSSES",
    "build_regressor",
    "correlation",
    "dance_logits",
    "dance_loss",
    "dance_row_losses",
    "dance_weights",
    "decorrelation_loss",
    "directions_loss",
    "enqueue",
    "make_proxies",
    "margin_loss",
    "multi_similarity_loss",
    "proxy_softmax_loss",
    "triplet_semihard_loss",
]
