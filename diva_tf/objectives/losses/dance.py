"""DaNCE, DiVA's distance-weighted MoCo loss `criteria/fast_moco.py` (algorithm.md 4.5); its key queue is
`diva_tf.training.trainer`."""

import math

import tensorflow as tf

from diva_tf.objectives.miners.distance import log_sphere_weights
from diva_tf.objectives.ops import cast_to

# torch's clamp(min=1e-45) on float32 rounds 1e-45 to the smallest denormal, 2**-149.
LOG_MIN_WEIGHT = -149.0 * math.log(2.0)


def dance_weights(similarities, dim, lower_cutoff=0.5, upper_cutoff=1.4, fixed=False):
    """Negative weights W [B, M] from query-queue cosine similarities (algorithm.md 4.5 steps 2-4).

    delta = max(sqrt(max(2 - 2 S, 0)), lower_cutoff); w = exp(log_sphere_weights(delta) - max), with
    the max over the whole matrix (published) or per row (`fixed`); w = 0 where delta > upper_cutoff;
    clamp below at 1e-45; normalise over the batch axis (published: each queue column sums to 1) or per
    row (`fixed`). The clamp value is a float32 denormal, which TensorFlow on CPU flushes to zero (then
    fully cut-off columns would give 0/0), so the weights are built in log space: max(log w, ln 2^-149)
    followed by a softmax, which is the same clamp-then-divide. Constants: no gradient flows through.
    """
    s = tf.stop_gradient(similarities)
    delta = tf.maximum(tf.sqrt(tf.maximum(2.0 - 2.0 * s, 0.0)), lower_cutoff)
    log_w = log_sphere_weights(delta, dim)
    log_w = log_w - tf.reduce_max(log_w, axis=-1 if fixed else None, keepdims=True)
    log_w = tf.where(delta > upper_cutoff, tf.constant(-math.inf, log_w.dtype), log_w)
    log_w = tf.maximum(log_w, LOG_MIN_WEIGHT)
    return tf.nn.softmax(log_w, axis=-1 if fixed else 0)


def dance_logits(queries, keys, queue, temperature, lower_cutoff=0.5, upper_cutoff=1.4, fixed=False,
                 weighted=True):
    """z_b = [q_b.k_b, W_b1 q_b.Q_1, ..., W_bM q_b.Q_M] / temperature, [B, 1 + M] (algorithm.md 4.5 step 5).

    queries [B, D] (with gradient), keys [B, D] and queue [M, D] (constants) are unit-norm. The weights
    multiply the similarity logits themselves. weighted=False is plain MoCo (`criteria/moco.py`).
    """
    keys = tf.cast(tf.stop_gradient(keys), queries.dtype)
    queue = tf.cast(tf.stop_gradient(queue), queries.dtype)
    positive = tf.reduce_sum(queries * keys, axis=-1, keepdims=True)
    negative = tf.matmul(queries, queue, transpose_b=True)
    if weighted:
        dim = tf.shape(queries)[-1]
        negative = negative * dance_weights(negative, dim, lower_cutoff, upper_cutoff, fixed)
    return tf.concat([positive, negative], axis=-1) / cast_to(temperature, queries.dtype)


def dance_row_losses(logits):
    """Cross-entropy of each row of `dance_logits` with target index 0, [B]."""
    return tf.reduce_logsumexp(logits, axis=-1) - logits[:, 0]


def dance_loss(queries, keys, queue, temperature, lower_cutoff=0.5, upper_cutoff=1.4, fixed=False,
               weighted=True):
    """Mean over the batch of `dance_row_losses(dance_logits(...))`."""
    logits = dance_logits(queries, keys, queue, temperature, lower_cutoff, upper_cutoff, fixed, weighted)
    return tf.reduce_mean(dance_row_losses(logits))

