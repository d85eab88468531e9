"""Small differentiable building blocks shared by the objectives."""

import tensorflow as tf


@tf.custom_gradient
def gradient_reversal(x):
    """Identity forward; gradient multiplied by -1 backward (algorithm.md 4.6, scale 1)."""
    def grad(dy):
        return -dy
    return tf.identity(x), grad


def l2_normalize(x, axis=-1):
    """x / ||x|| along `axis` (torch.nn.functional.normalize, eps 1e-12)."""
    return tf.math.l2_normalize(x, axis=axis, epsilon=1e-24)


def cast_to(value, dtype):
    """`value` (Python number or tensor) as `dtype`, without a float32 detour for Python floats."""
    return tf.cast(tf.convert_to_tensor(value, dtype_hint=dtype), dtype)
