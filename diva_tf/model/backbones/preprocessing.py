"""Input normalisation as a serialisable layer, so exported models take raw 0..255 pixels."""

import keras
from keras import ops

_MODES = ("caffe", "torch", "tf", "lite", "unit", "none")


@keras.saving.register_keras_serializable(package="diva_tf")
class Normalize(keras.layers.Layer):
    """Maps float RGB pixels in 0..255 to what a backbone expects.

    caffe: RGB->BGR minus the ImageNet BGR means (keras ResNet50); torch: [0,1] then ImageNet mean/std
    (torchvision, algorithm.md 2.1); tf: [-1, 1]; lite: (x - 127) / 128 (EfficientNet-Lite);
    unit: [0, 1]; none: unchanged (the keras application normalises itself).
    """

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in _MODES:
            raise ValueError(f"unknown normalisation mode {mode!r}; one of {_MODES}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor([103.939, 116.779, 123.68], x.dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor([0.485, 0.456, 0.406], x.dtype)
            std = ops.convert_to_tensor([0.229, 0.224, 0.225], x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        if self.mode == "unit":
            return x / 255.0
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
