"""A tiny CNN for tests and quick CPU runs: three conv-BN-ReLU stages, stride 2 each."""

import keras


def tiny_cnn(input_shape=(None, None, 3), widths=(16, 32, 64), name="tiny") -> keras.Model:
    """Feature-map model; has BatchNorm so frozen-BN semantics can be tested on it."""
    inputs = keras.Input(input_shape)
    x = inputs
    for i, w in enumerate(widths):
        x = keras.layers.Conv2D(w, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(epsilon=1e-5, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    return keras.Model(inputs, x, name=name)
