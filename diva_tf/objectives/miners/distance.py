"""Distance-weighted negative sampling (Wu et al. 2017), DiVA's discriminative miner (algorithm.md 4.2)."""

import numpy as np
import tensorflow as tf

from diva_tf.objectives.miners.sampling import gumbel_choice, stateless_uniforms, uniform_choice


def pairwise_squared_distances(x):
    """max(||x_i||^2 + ||x_j||^2 - 2 x_i.x_j, 0) for the rows of x ([B, D] -> [B, B])."""
    sq = tf.reduce_sum(tf.square(x), axis=-1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * tf.matmul(x, x, transpose_b=True)
    return tf.maximum(d2, 0.0)


def pairwise_distances(x):
    """d_ij = sqrt(max(||x_i||^2 + ||x_j||^2 - 2 x_i.x_j, 0)) (algorithm.md 4.2 step 1).

    Its gradient is infinite at d = 0; the miners only use it on detached embeddings.
    """
    return tf.sqrt(pairwise_squared_distances(x))


def log_sphere_weights(d, dim):
    """log w(d) = (2 - D) ln d - ((D - 3) / 2) ln(1 - d^2 / 4) (algorithm.md 4.2 step 4, 4.5 step 3).

    The inverse of the density of pairwise distances between points uniform on the unit sphere in R^D.
    At d = 2 (antipodal points) the original gets +inf and then NaN probabilities; here d^2 / 4 is
    clipped at 1 - eps(dtype), which gives such a pair a finite weight that dominates every other one,
    the limit of the formula.
    """
    dim = tf.cast(dim, d.dtype)
    eps = float(np.finfo(d.dtype.as_numpy_dtype).eps)
    quarter_sq = tf.minimum(0.25 * tf.square(d), 1.0 - eps)
    return (2.0 - dim) * tf.math.log(d) - 0.5 * (dim - 3.0) * tf.math.log1p(-quarter_sq)


def negative_logits(distances, same_label, dim, lower_cutoff=0.5):
    """log q_ij up to a per-row constant (algorithm.md 4.2 step 4); -inf for same-label entries.

    Distances are clamped below at `lower_cutoff`; same-label log-weights are set to 0 before the row
    maximum is subtracted, as in the original.
    """
    log_w = log_sphere_weights(tf.maximum(distances, lower_cutoff), dim)
    log_w = tf.where(same_label, tf.zeros_like(log_w), log_w)
    log_w = log_w - tf.reduce_max(log_w, axis=-1, keepdims=True)
    return tf.where(same_label, tf.constant(-np.inf, log_w.dtype), log_w)


def negative_probabilities(embeddings, labels, lower_cutoff=0.5):
    """The [B, B] matrix q_ij the miner samples negatives from (rows without negatives are 0)."""
    x = tf.stop_gradient(embeddings)
    same = _same_label(labels)
    q = tf.exp(negative_logits(pairwise_distances(x), same, tf.shape(x)[-1], lower_cutoff))
    return tf.math.divide_no_nan(q, tf.reduce_sum(q, axis=-1, keepdims=True))


def distance_weighted_triplets(embeddings, labels, seed, lower_cutoff=0.5):
    """One triplet per batch index (algorithm.md 4.2): (anchors, positives, negatives, valid), each [B].

    Anchor i = i. Positive: uniform among the other indices with i's label. Negative: drawn from q_i.
    valid[i] = 1.0 iff i has another same-label index and a different-label one (the original crashes
    on the latter), else 0.0 and the indices are placeholders. Randomness is stateless in `seed`
    (shape [2]), so replicas given the same gathered batch and seed draw the same triplets.
    """
    x = tf.stop_gradient(embeddings)
    same = _same_label(labels)
    others = tf.logical_not(tf.eye(tf.shape(same)[0], dtype=tf.bool))
    positive_mask = tf.logical_and(same, others)
    logits = negative_logits(pairwise_distances(x), same, tf.shape(x)[-1], lower_cutoff)
    uniforms = stateless_uniforms(tf.concat([[2], tf.shape(same)], 0), seed)
    positives = uniform_choice(positive_mask, uniforms[0])
    negatives = gumbel_choice(logits, uniforms[1])
    valid = tf.logical_and(tf.reduce_any(positive_mask, axis=-1),
                           tf.reduce_any(tf.logical_not(same), axis=-1))
    anchors = tf.range(tf.shape(same)[0], dtype=tf.int32)
    return anchors, positives, negatives, tf.cast(valid, tf.float32)


def _same_label(labels):
    labels = tf.reshape(labels, [-1])
    return tf.equal(labels[:, None], labels[None, :])
