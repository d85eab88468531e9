"""The MoCo key queue of the self-similarity head (spec 4.5): a FIFO of the key encoder's past keys."""

import tensorflow as tf


def enqueue(queue, keys):
    """FIFO update: drop the oldest B rows from the front and append this step's keys at the end."""
    keys = tf.cast(tf.stop_gradient(keys), queue.dtype)
    batch = keys.shape[0] if keys.shape[0] is not None else tf.shape(keys)[0]
    return tf.concat([queue[batch:], keys], axis=0)
