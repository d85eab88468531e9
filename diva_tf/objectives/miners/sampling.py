"""Static-shape categorical draws from explicit uniforms, so that miners stay stateless and XLA-friendly."""

import tensorflow as tf

# Pinned rather than "auto_select", which picks another generator under XLA than in eager mode.
ALGORITHM = "philox"


def stateless_uniforms(shape, seed):
    """U[0, 1) float32 values of `shape` (24-bit grid), a pure function of `seed` (int, shape [2]).

    Built from raw Philox bits because TF converts bits to floats differently with and without XLA;
    this way eager, tf.function and jit-compiled miners draw the same triplets.
    """
    bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32,
                                       alg=ALGORITHM)
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * 2.0 ** -24


def split_seed(seed, num):
    """`num` independent seeds ([num, 2]) derived from `seed`."""
    return tf.random.experimental.stateless_split(seed, num, alg=ALGORITHM)


def uniform_choice(mask, uniforms):
    """Index drawn uniformly among the True entries of each row of `mask` ([..., N] -> [...], int32).

    `uniforms` holds i.i.d. U[0, 1) values of mask's shape; the arg-max of the masked values is uniform
    among the allowed entries. A row without any True entry returns index 0 (callers mask it out).
    """
    scores = tf.where(mask, tf.cast(uniforms, tf.float32), -1.0)
    return tf.argmax(scores, axis=-1, output_type=tf.int32)


def gumbel_choice(logits, uniforms):
    """Index drawn from softmax(logits) along the last axis via the Gumbel-max trick ([..., N] -> [...]).

    Entries at -inf are never drawn; a row of only -inf returns index 0 (callers mask it out).
    """
    u = tf.cast(uniforms, logits.dtype)
    gumbel = -tf.math.log(-tf.math.log(u))
    return tf.argmax(logits + gumbel, axis=-1, output_type=tf.int32)
