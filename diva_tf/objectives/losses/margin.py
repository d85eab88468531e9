"""Margin loss with learnable per-class beta (Wu et al. 2017), DiVA's `criteria/margin.py` (algorithm.md 4.1)."""

import tensorflow as tf


def unpack_triplets(triplets):
    """(anchors, positives, negatives[, valid]) -> the four tensors; a missing mask means all valid."""
    anchors, positives, negatives, *rest = triplets
    valid = rest[0] if rest else tf.ones_like(anchors, tf.float32)
    return anchors, positives, negatives, valid


def margin_loss(embeddings, labels, beta, triplets, margin=0.2):
    """algorithm.md 4.1: sum over valid triplets of the two hinges, divided by K.

    d = sqrt(||x_a - x_b||^2 + 1e-8); l+ = relu(d_ap - beta[y_a] + margin); l- = relu(beta[y_a] - d_an
    + margin), with y_a the anchor's TRUE label (also for the shared task). K counts the triplets with
    l+ > 0 OR l- > 0 (once each); the loss is 0 when K = 0 (no active hinge, or no valid triplet).
    `triplets` is a miner's (anchors, positives, negatives, valid); `beta` is the [C] vector.
    """
    anchors, positives, negatives, valid = unpack_triplets(triplets)
    x = embeddings
    x_a = tf.gather(x, anchors)
    d_ap = tf.sqrt(tf.reduce_sum(tf.square(x_a - tf.gather(x, positives)), axis=-1) + 1e-8)
    d_an = tf.sqrt(tf.reduce_sum(tf.square(x_a - tf.gather(x, negatives)), axis=-1) + 1e-8)
    beta_a = _lookup(beta, tf.gather(tf.reshape(labels, [-1]), anchors), x.dtype)
    valid = tf.cast(valid, x.dtype)
    pos_loss = tf.nn.relu(d_ap - beta_a + margin) * valid
    neg_loss = tf.nn.relu(beta_a - d_an + margin) * valid
    active = tf.cast(tf.logical_or(pos_loss > 0, neg_loss > 0), x.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(pos_loss + neg_loss), tf.reduce_sum(active))


def _lookup(beta, classes, dtype):
    """beta[classes] through a one-hot product, so that beta's gradient is dense, as in torch, rather
    than IndexedSlices (which sparse optimizer paths and gradient all-reduce treat differently)."""
    beta = tf.cast(beta, dtype)
    return tf.linalg.matvec(tf.one_hot(classes, tf.shape(beta)[0], dtype=dtype), beta)
