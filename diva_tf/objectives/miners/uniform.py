"""Random triplets: `--miner=random`, the baseline against which a miner's choice is measured."""

import tensorflow as tf

from diva_tf.objectives.miners.sampling import stateless_uniforms, uniform_choice


def random_triplets(embeddings, labels, seed):
    """One triplet per batch index: (anchors, positives, negatives, valid), each [B].

    Anchor i = i; positive uniform among the other indices with i's label; negative uniform among
    the indices with another label (the embeddings are not looked at). valid[i] = 1.0 iff both
    exist. Stateless in `seed` (shape [2]).
    """
    labels = tf.reshape(labels, [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    positive_mask = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(same)[0], dtype=tf.bool)))
    negative_mask = tf.logical_not(same)
    uniforms = stateless_uniforms(tf.concat([[2], tf.shape(same)], 0), seed)
    positives = uniform_choice(positive_mask, uniforms[0])
    negatives = uniform_choice(negative_mask, uniforms[1])
    valid = tf.logical_and(tf.reduce_any(positive_mask, -1), tf.reduce_any(negative_mask, -1))
    anchors = tf.range(tf.shape(same)[0], dtype=tf.int32)
    return anchors, positives, negatives, tf.cast(valid, tf.float32)
