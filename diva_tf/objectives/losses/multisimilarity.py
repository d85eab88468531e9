"""Multi-similarity loss with its pair mining (Wang et al., CVPR 2019).

Follows pytorch-metric-learning's `MultiSimilarityMiner(epsilon)` + `MultiSimilarityLoss(alpha, beta,
base)` with cosine similarity and the mean reducer.
"""

import tensorflow as tf

from diva_tf.objectives.ops import l2_normalize


def _log1p_sum_exp(z, mask):
    """log(1 + sum_{j in mask} exp(z_j)) per row, stably (0 for a row with an empty mask)."""
    z = tf.where(mask, z, tf.constant(-float("inf"), z.dtype))
    return tf.reduce_logsumexp(tf.concat([tf.zeros_like(z[:, :1]), z], axis=-1), axis=-1)


def multi_similarity_loss(embeddings, labels, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
    """mean_i [ 1/alpha log(1 + sum_{p in P_i} e^{-alpha (S_ip - base)})
               + 1/beta log(1 + sum_{n in N_i} e^{beta (S_in - base)}) ],  S = cosine similarity.

    Mining: P_i = {p != i, y_p = y_i : S_ip - epsilon < max_{y_n != y_i} S_in},
            N_i = {n, y_n != y_i : S_in + epsilon > min_{p != i, y_p = y_i} S_ip}.
    The mean runs over all B anchors. Like pytorch-metric-learning, the loss is 0 when at most one
    positive and at most one negative pair are mined in the whole batch.
    """
    labels = tf.reshape(labels, [-1])
    x = l2_normalize(embeddings)
    s = tf.matmul(x, x, transpose_b=True)
    same = tf.equal(labels[:, None], labels[None, :])
    negative = tf.logical_not(same)
    positive = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(s)[0], dtype=tf.bool)))
    s_mine = tf.stop_gradient(s)
    hardest_negative = tf.reduce_max(tf.where(negative, s_mine, -float("inf")), axis=-1, keepdims=True)
    hardest_positive = tf.reduce_min(tf.where(positive, s_mine, float("inf")), axis=-1, keepdims=True)
    positive = tf.logical_and(positive, s_mine - epsilon < hardest_negative)
    negative = tf.logical_and(negative, s_mine + epsilon > hardest_positive)
    loss = tf.reduce_mean(_log1p_sum_exp(-alpha * (s - base), positive) / alpha
                          + _log1p_sum_exp(beta * (s - base), negative) / beta)
    enough_pairs = tf.logical_or(_count(positive) > 1, _count(negative) > 1)
    return tf.where(enough_pairs, loss, tf.zeros_like(loss))


def _count(mask):
    return tf.reduce_sum(tf.cast(mask, tf.int32))
