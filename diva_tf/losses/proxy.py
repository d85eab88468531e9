"""Proxy-based classification losses: normalized softmax (Zhai & Wu, BMVC 2019) and ArcFace (Deng et
al., CVPR 2019), as RevDML's `criteria/softmax.py` and `criteria/arcface.py`."""

import math

import tensorflow as tf

from diva_tf.layers import cast_to, l2_normalize


def make_proxies(num_classes, dim, seed=None, name="proxies"):
    """A trainable [C, D] proxy matrix, U(-1/sqrt(D), 1/sqrt(D)) as RevDML initialises its class map."""
    bound = 1.0 / math.sqrt(dim)
    init = tf.random.stateless_uniform([num_classes, dim], [0, 0] if seed is None else [seed, 0],
                                       -bound, bound)
    return tf.Variable(init, name=name)


def proxy_softmax_loss(embeddings, labels, proxies, scale=16.0, margin=0.0):
    """mean_b cross-entropy(scale * z_b, y_b), z_bc = cos(theta_bc) for c != y_b, cos(theta_by + margin).

    cos(theta_bc) = normalize(x_b) . normalize(w_c). margin = 0 is the normalized softmax with
    temperature 1/scale; margin > 0 is ArcFace's additive angular margin as in the paper's pseudocode
    (no "easy margin" switch; cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m), sin(theta) >= 0).
    """
    labels = tf.reshape(labels, [-1])
    x = l2_normalize(embeddings)
    w = l2_normalize(tf.cast(proxies, x.dtype))
    cos = tf.matmul(x, w, transpose_b=True)
    sin = tf.sqrt(tf.maximum(1.0 - tf.square(cos), 1e-12))
    margin = cast_to(margin, x.dtype)
    cos_margin = cos * tf.cos(margin) - sin * tf.sin(margin)
    target = tf.one_hot(labels, tf.shape(w)[0], on_value=True, off_value=False)
    logits = scale * tf.where(target, cos_margin, cos)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
