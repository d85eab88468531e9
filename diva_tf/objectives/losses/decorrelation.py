"""Decorrelation by adversarial separation, DiVA's `criteria/adversarial_separation.py` (algorithm.md 4.6)."""

import keras
import tensorflow as tf

from diva_tf.model.initializers import torch_dense
from diva_tf.objectives.ops import cast_to, gradient_reversal, l2_normalize


def build_regressor(embed_dim=128, hidden=512, name=None, seed=None, dtype="float32", out_dim=None):
    """xi: Linear(embed_dim -> hidden) -> ReLU -> Linear(hidden -> out_dim), PyTorch default init.

    out_dim (the target head's dimension) defaults to embed_dim (the source's), as in DiVA."""
    second_seed = None if seed is None else seed + 2
    return keras.Sequential([
        torch_dense(hidden, embed_dim, seed=seed, dtype=dtype),
        keras.layers.ReLU(dtype=dtype),
        torch_dense(out_dim or embed_dim, hidden, seed=second_seed, dtype=dtype),
    ], name=name)


def correlation(source, target, regressor):
    """C = mean_b (1/D) sum_j (target[b, j] * normalize(xi(source))[b, j])^2, no gradient reversal."""
    projected = l2_normalize(tf.cast(regressor(source), target.dtype))
    return tf.reduce_mean(tf.square(target * projected))


def decorrelation_loss(source, target, regressor, rho):
    """-rho * C on the gradient-reversed, re-normalised embeddings (algorithm.md 4.6).

    Descending on it, the regressor maximises C while source and target (through the reversal, which
    acts on both) minimise it; the renormalisation leaves values unchanged but adds its Jacobian.
    """
    source = l2_normalize(gradient_reversal(source))
    target = l2_normalize(gradient_reversal(target))
    return -cast_to(rho, target.dtype) * correlation(source, target, regressor)


def directions_loss(embeddings, regressors, rhos):
    """Sum of `decorrelation_loss` over the directions (source, target) keying `rhos`.

    `regressors` and `rhos` are keyed by direction; `ObjectiveOptions.check_heads` requires
    exactly one rho per direction (the original silently dropped directions without one).
    """
    terms = [decorrelation_loss(embeddings[src], embeddings[tgt], regressors[(src, tgt)], rho)
             for (src, tgt), rho in rhos.items()]
    return tf.add_n(terms) if terms else tf.constant(0.0)
