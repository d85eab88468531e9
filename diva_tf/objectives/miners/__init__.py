"""Triplet miners of DiVA's margin-loss tasks (algorithm.md 4.2-4.4) and a uniform baseline: pure, stateless,
static-shape functions (`diva_tf.objectives.registry` names them for --miner)."""

from diva_tf.objectives.miners.distance import (distance_weighted_triplets, log_sphere_weights, negative_logits,
                                     negative_probabilities, pairwise_distances, pairwise_squared_distances)
from diva_tf.objectives.miners.intra import intra_random_triplets
from diva_tf.objectives.miners.shared import permute_labels, shared_permuted_triplets
from diva_tf.objectives.miners.uniform import random_triplets

__all__ = [
    "distance_weighted_triplets",
    "intra_random_triplets",
    "log_sphere_weights",
    "negative_logits",
    "negative_probabilities",
    "pairwise_distances",
    "pairwise_squared_distances",
    "permute_labels",
    "random_triplets",
    "shared_permuted_triplets",
]
