"""DiVA's intra-class miner, `--diva_intra random` (algorithm.md 4.4)."""

import tensorflow as tf

from diva_tf.objectives.miners.sampling import stateless_uniforms, uniform_choice


def intra_random_triplets(labels, seed, num_triplets=None):
    """`num_triplets` (default B) triplets (anchors, positives, negatives, valid), each [T].

    Per triplet: a class uniform over the *distinct* classes in the batch, then a, p and n drawn
    independently and uniformly with replacement from that class's batch indices, so they may
    coincide (algorithm.md 4.4; kept on purpose). valid is all ones. Stateless in `seed` (shape [2]).
    """
    labels = tf.reshape(labels, [-1])
    batch = tf.shape(labels)[0]
    if num_triplets is None:
        num_triplets = labels.shape[0] if labels.shape[0] is not None else batch
    same = tf.equal(labels[:, None], labels[None, :])
    index = tf.range(batch)
    earlier = index[None, :] < index[:, None]
    first_of_class = tf.logical_not(tf.reduce_any(tf.logical_and(same, earlier), axis=-1))
    uniforms = stateless_uniforms(tf.stack([4, num_triplets, batch]), seed)
    representative = uniform_choice(tf.broadcast_to(first_of_class, [num_triplets, batch]), uniforms[0])
    members = tf.gather(same, representative)
    anchors, positives, negatives = (uniform_choice(members, uniforms[k]) for k in (1, 2, 3))
    return anchors, positives, negatives, tf.ones([num_triplets], tf.float32)
