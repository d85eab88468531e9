"""DiVA's shared-task miner, `--diva_sharing random` (algorithm.md 4.3): distance sampling on shuffled labels."""

import tensorflow as tf

from diva_tf.objectives.miners.distance import distance_weighted_triplets
from diva_tf.objectives.miners.sampling import split_seed, stateless_uniforms


def permute_labels(labels, seed):
    """The label vector in a random order (stateless in `seed`): sample i gets labels[pi(i)]."""
    labels = tf.reshape(labels, [-1])
    order = tf.argsort(stateless_uniforms(tf.shape(labels), seed))
    return tf.gather(labels, order)


def shared_permuted_triplets(embeddings, labels, seed, lower_cutoff=0.5):
    """algorithm.md 4.3: `distance_weighted_triplets` on the batch with its labels permuted.

    Returns (anchors, positives, negatives, valid) in the original batch indexing. Positives share the
    anchor's *permuted* label; the margin loss must still look beta up by the anchor's true label.
    """
    permute_seed, mine_seed = tf.unstack(split_seed(seed, 2))
    return distance_weighted_triplets(embeddings, permute_labels(labels, permute_seed), mine_seed,
                                      lower_cutoff)
