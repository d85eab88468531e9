"""diva_tf.serving.lean: the server's path for large images gives `serving_default`'s outputs
(the SavedModel called directly is the reference) and is refused for an export it would not
reproduce."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from diva_tf.serving import export, lean
from export_helpers import tiny_config


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from diva_tf.model.network import build_embedding_model

    base = str(tmp_path_factory.mktemp("models") / "diva")
    cfg = tiny_config(seed=5)
    export.export_model(build_embedding_model(cfg), cfg, base, version=1)
    return export.load_export(base)


def encode(height: int, width: int, fmt: str, mode: str = "RGB") -> bytes:
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = np.random.RandomState(height).randint(0, 256, (height, width, channels))
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8).squeeze(), mode).save(buf, fmt)
    return buf.getvalue()


def test_large_images_give_the_savedmodels_outputs(loaded):
    images = tf.constant([encode(1400, 1000, "PNG"), encode(900, 1300, "JPEG"),
                          encode(1200, 1200, "PNG", "L"), encode(1000, 1100, "PNG", "RGBA")])
    want = loaded.signature()(image_bytes=images)
    got = lean.verified(loaded)(image_bytes=images)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("field,change", [("resize", 4), ("crop", -2)])
def test_an_export_it_does_not_reproduce_is_refused(loaded, monkeypatch, field, change):
    """Another resize (other embeddings) or crop (other input shape) than the graph's."""
    assert lean.verified(loaded) is not None
    monkeypatch.setattr(loaded, "manifest", {**loaded.manifest,
                                             field: loaded.manifest[field] + change})
    assert lean.verified(loaded) is None
