"""Proxy-based classification losses: normalized softmax (Zhai & Wu, BMVC 2019) and ArcFace (Deng et
al., CVPR 2019), as RevDML's `criteria/softmax.py` and `criteria/arcface.py`."""

import keras
import tensorflow as tf

from diva_tf.objectives.ops import cast_to, l2_normalize


def proxy_initializer(seed=None):
    """Initial [C, D] class proxies: i.i.d. N(0, 1) entries (`DiVAObjective` owns the variable).

    The loss only sees normalize(w), and an isotropic Gaussian gives directions uniform on the
    sphere. RevDML initialises its class map with U(-1/sqrt(D), 1/sqrt(D)) instead: same kind of
    directions, but rows of norm ~0.58 where N(0, 1) rows have norm ~sqrt(D), so a step of
    --loss_proxy_lr turns an N(0, 1) proxy by about sqrt(3 D) times less (~20x at D = 128).
    """
    return keras.initializers.RandomNormal(stddev=1.0, seed=seed)


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
