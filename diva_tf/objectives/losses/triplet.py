"""Triplet loss with batch-all semi-hard negative mining (FaceNet, Schroff et al. 2015).

Reproduces `tfa.losses.triplet_semihard_loss` of TensorFlow Addons 0.23 (the package itself cannot be
installed with Keras 3). tfa's default `distance_metric="L2"` is the plain Euclidean distance; older
tfa releases (and tf.contrib) defaulted to squared distances, available here as `squared=True`.
"""

import tensorflow as tf

from diva_tf.objectives.losses.margin import unpack_triplets
from diva_tf.objectives.miners.distance import pairwise_squared_distances


def tfa_pairwise_distances(x, squared=False):
    """tfa's `metric_learning.pairwise_distance`: gradient-safe sqrt (0 where d^2 <= 0), zero diagonal."""
    d2 = pairwise_squared_distances(x)
    if squared:
        d = d2
    else:
        zero = d2 <= 0.0
        d = tf.where(zero, tf.zeros_like(d2), tf.sqrt(tf.where(zero, tf.ones_like(d2), d2)))
    return d * (1.0 - tf.eye(tf.shape(x)[0], dtype=x.dtype))


def triplet_semihard_loss(embeddings, labels, margin=0.2, squared=False):
    """mean over positive pairs (a, p), a != p, of relu(margin + d_ap - d_an*).

    d_an* = min{d_an : y_n != y_a, d_an > d_ap} if that set is non-empty (the semi-hard negative),
    else max{d_an : y_n != y_a} (the easiest negative; tfa's masked maximum gives min_j d_aj = 0 when a
    has no negative at all). Unlike tfa (0/0 = NaN) the loss is 0 when the batch has no positive pair.
    """
    labels = tf.reshape(labels, [-1])
    d = tfa_pairwise_distances(embeddings, squared)
    same = tf.equal(labels[:, None], labels[None, :])
    negative = tf.logical_not(same)
    positive = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(d)[0], dtype=tf.bool)))
    d_ap = d[:, :, None]
    d_an = d[:, None, :]
    farther = tf.logical_and(negative[:, None, :], d_an > d_ap)
    semihard = tf.reduce_min(tf.where(farther, d_an, d_an.dtype.max), axis=-1)
    easiest = tf.where(tf.reduce_any(negative, axis=-1),
                       tf.reduce_max(tf.where(negative, d, d.dtype.min), axis=-1),
                       tf.reduce_min(d, axis=-1))
    hardest_allowed = tf.where(tf.reduce_any(farther, axis=-1), semihard, easiest[:, None])
    positive = tf.cast(positive, d.dtype)
    losses = tf.nn.relu(margin + d - hardest_allowed) * positive
    return tf.math.divide_no_nan(tf.reduce_sum(losses), tf.reduce_sum(positive))


def triplet_margin_loss(embeddings, labels, triplets, margin=0.2):
    """Mean over a miner's valid triplets of relu(d_ap - d_an + margin), d = sqrt(||.||^2 + 1e-8)
    (pytorch-metric-learning's TripletMarginLoss with a miner, averaged over every valid
    triplet); 0 without a valid triplet. `labels` are unused: the miner chose the triplets."""
    anchors, positives, negatives, valid = unpack_triplets(triplets)
    x_a = tf.gather(embeddings, anchors)
    d_ap = tf.sqrt(tf.reduce_sum(tf.square(x_a - tf.gather(embeddings, positives)), -1) + 1e-8)
    d_an = tf.sqrt(tf.reduce_sum(tf.square(x_a - tf.gather(embeddings, negatives)), -1) + 1e-8)
    valid = tf.cast(valid, embeddings.dtype)
    losses = tf.nn.relu(d_ap - d_an + margin) * valid
    return tf.math.divide_no_nan(tf.reduce_sum(losses), tf.reduce_sum(valid))
