"""Test-wide settings: quiet TensorFlow, two logical CPU devices for distribution tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

# Two logical CPU devices give a real MirroredStrategy on one machine; this
# must happen before TensorFlow initialises its devices, so it is done once here.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
except RuntimeError:
    pass
