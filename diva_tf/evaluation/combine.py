"""Test-time combination of heads (algorithm.md 2.4): e = normalize(concat(w_1 * phi_1, ..., w_n * phi_n)).

Every head is unit-norm, so the combined squared distance is sum_i w_i^2 |phi_i(x) - phi_i(y)|^2
divided by sum_i w_i^2: the weights act squared on the per-head distances. This module is the one
implementation of the rule (numpy for evaluation, TensorFlow for the exported graph).
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def _checked_weights(heads, weights) -> tuple:
    heads, weights = list(heads), tuple(float(w) for w in weights)
    if len(heads) != len(weights):
        raise ValueError(f"{len(weights)} weights for {len(heads)} heads {heads}")
    if not heads:
        raise ValueError("no heads to combine")
    return heads, weights


def combine_heads(embs: dict, heads, weights) -> np.ndarray:
    """float32 [n, sum of head dims]: the heads in `heads` order, scaled, concatenated, unit-norm."""
    heads, weights = _checked_weights(heads, weights)
    x = np.concatenate([np.asarray(embs[h], np.float32) * np.float32(w)
                        for h, w in zip(heads, weights)], axis=1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, _EPS)).astype(np.float32)


def combine_heads_tf(embs: dict, heads, weights):
    """The same combination as a TensorFlow op (for the exported serving graph)."""
    import tensorflow as tf

    heads, weights = _checked_weights(heads, weights)
    x = tf.concat([tf.cast(embs[h], tf.float32) * w for h, w in zip(heads, weights)], axis=-1)
    return tf.math.l2_normalize(x, axis=-1, epsilon=_EPS * _EPS)


def combination_name(heads, weights) -> str:
    """'combined[0.5,1,1,1]' for several heads; a single head keeps its own name."""
    heads, weights = _checked_weights(heads, weights)
    if len(heads) == 1:
        return heads[0]
    return "combined[" + ",".join(f"{w:g}" for w in weights) + "]"
