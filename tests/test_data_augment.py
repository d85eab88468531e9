"""Augmentation (algorithm.md 3.3): the random-resized-crop box against torchvision's algorithm and its
bounds, the flip, output shapes/dtypes/range, RGB decoding, and the test view against PIL."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from diva_tf.data import augment
from diva_tf.data.augment import crop_box, resized_shape, train_view
from diva_tf.data.source import decode_rgb

SEEDS = tf.stack([tf.range(400, dtype=tf.int64), tf.fill([400], tf.constant(11, tf.int64))], 1)


def torchvision_box(u, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop.get_params, fed the uniforms u[4, attempts]."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for k in range(u.shape[1]):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0, k])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1, k])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2, k] * (height - h + 1)), int(u[3, k] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@tf.function(reduce_retracing=True)
def boxes(seeds, height, width):
    return tf.map_fn(lambda s: tf.stack(crop_box(s, height, width)), seeds,
                     fn_output_signature=tf.int32)


@tf.function(reduce_retracing=True)
def many_views(image, seeds, size):
    return tf.map_fn(lambda s: train_view(image, s, size), seeds, fn_output_signature=tf.float32)


@pytest.mark.parametrize("height,width", [(200, 300), (40, 40), (10, 200), (300, 12), (1, 1)])
def test_crop_box_is_torchvision_random_resized_crop(height, width):
    got = boxes(SEEDS[:150], tf.constant(height), tf.constant(width)).numpy()
    for seed, box in zip(SEEDS[:150], got):
        u = tf.random.stateless_uniform([4, 10], seed, dtype=tf.float64).numpy()
        assert tuple(box) == torchvision_box(u, height, width)


def test_crop_box_bounds_and_spread():
    height, width = 240, 320
    b = boxes(SEEDS, tf.constant(height), tf.constant(width)).numpy().astype(np.float64)
    top, left, h, w = b.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    aspect = w / h
    assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0  # rounding to whole pixels
    assert area.min() < 0.12 and area.max() > 0.9
    assert aspect.min() >= 0.75 * 0.97 and aspect.max() <= 4 / 3 * 1.03
    # Same law as torchvision's algorithm fed independent uniforms (mean area within 4 SE).
    rng = np.random.RandomState(0)
    ref = np.array([torchvision_box(rng.uniform(size=(4, 10)), height, width)
                    for _ in range(4000)], np.float64)
    ref_area = ref[:, 2] * ref[:, 3] / (height * width)
    assert abs(area.mean() - ref_area.mean()) < 4 * ref_area.std() / math.sqrt(len(area))
    # Offsets spread over the free range (uniform: mean position ~ half of it).
    free = height - h
    assert abs(np.mean(top[free > 0] / free[free > 0]) - 0.5) < 0.05


def gradient_image(height=30, width=40):
    x = np.linspace(0, 255, width)[None, :, None]
    return tf.constant(np.broadcast_to(x, (height, width, 3)).astype(np.uint8))


def test_train_view_shape_range_and_flip_rate():
    image = gradient_image()
    views = many_views(image, SEEDS, 24).numpy()
    assert views.shape == (400, 24, 24, 3) and views.dtype == np.float32
    assert views.min() >= 0 and views.max() <= 255
    slope = views[:, :, -1, 0].mean(axis=1) - views[:, :, 0, 0].mean(axis=1)
    flipped = int((slope < 0).sum())
    assert np.all(np.abs(slope) > 0), "gradient survives every crop"
    n = 400
    assert abs(flipped - n / 2) < 4 * math.sqrt(n / 4)
    again = train_view(image, SEEDS[5], 24).numpy()
    np.testing.assert_array_equal(again, views[5])


def encoded(array, fmt="PNG", mode=None):
    out = io.BytesIO()
    Image.fromarray(array).convert(mode or Image.fromarray(array).mode).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_decode_gives_rgb_like_pil_convert(mode):
    rng = np.random.RandomState(1)
    rgb = rng.randint(0, 256, (9, 7, 3)).astype(np.uint8)
    data = encoded(rgb, "PNG", mode)
    ours = decode_rgb(tf.constant(data)).numpy()
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert ours.dtype == np.uint8 and ours.shape == (9, 7, 3)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("height,width", [(37, 53), (53, 37), (20, 20), (300, 200), (99, 100)])
def test_resized_shape_follows_torchvision(height, width):
    size = 24
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    expected = (size, new_long) if height <= width else (new_long, size)
    assert tuple(int(v) for v in resized_shape(height, width, size)) == expected


@pytest.mark.parametrize("shape,resize,crop", [((37, 53), 24, 20), ((53, 37), 24, 21),
                                               ((37, 53), 64, 56), ((64, 64), 72, 64)])
def test_test_view_matches_pil_resize_and_center_crop(shape, resize, crop):
    rng = np.random.RandomState(0)
    small = rng.randint(0, 256, (9, 13, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(small).resize(shape[::-1], Image.BICUBIC))
    h, w = shape
    nh, nw = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
    ref = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
    top, left = int(round((nh - crop) / 2)), int(round((nw - crop) / 2))
    ref = ref[top:top + crop, left:left + crop]
    out = augment.test_view(tf.constant(image), resize, crop).numpy()
    assert out.shape == (crop, crop, 3) and out.dtype == np.float32
    assert np.abs(out - ref).max() <= 1.05  # PIL rounds to uint8
    assert np.abs(out - ref).mean() < 0.4


def reference_jitter(image, brightness, contrast, saturation, hue, order):
    """torchvision ColorJitter's tensor formulas in float64 numpy (hue via colorsys)."""
    import colorsys

    luma = np.array(augment.LUMA)

    def hue_shift(x):
        flat = x.reshape(-1, 3) / 255.0
        out = []
        for r, g, b in flat:
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            out.append(colorsys.hsv_to_rgb((h + hue) % 1.0, s, v))
        return np.array(out).reshape(x.shape) * 255.0

    ops = [lambda x: x * brightness,
           lambda x: contrast * x + (1 - contrast) * (x @ luma).mean(),
           lambda x: saturation * x + (1 - saturation) * (x @ luma)[..., None],
           hue_shift]
    x = image.astype(np.float64)
    for k in order:
        x = np.clip(ops[k](x), 0.0, 255.0)
    return x


@pytest.mark.parametrize("factors,order", [((1.3, 0.7, 1.2, 0.1), (0, 1, 2, 3)),
                                           ((0.6, 1.4, 0.6, -0.35), (3, 2, 1, 0)),
                                           ((1.1, 1.2, 1.4, 0.4), (2, 0, 3, 1))])
def test_color_jitter_matches_torchvision_formulas(factors, order):
    image = np.random.default_rng(3).uniform(0, 255, (9, 7, 3))
    got = augment.color_jitter(tf.constant(image, tf.float32), *factors,
                               tf.constant(order)).numpy()
    np.testing.assert_allclose(got, reference_jitter(image, *factors, order), atol=0.05)


def test_realistic_view_grayscale_rate_jitter_and_default_unchanged():
    image = tf.constant(np.random.default_rng(4).integers(0, 256, (40, 40, 3)), tf.uint8)
    weak = many_views(image, SEEDS, 16).numpy()
    realistic = tf.map_fn(lambda s: train_view(image, s, 16, realistic=True), SEEDS,
                          fn_output_signature=tf.float32).numpy()
    assert realistic.shape == weak.shape and realistic.min() >= 0 and realistic.max() <= 255
    gray = np.all(np.abs(realistic - realistic[..., :1]) < 1e-3, axis=(1, 2, 3))
    # RandomGrayscale(0.2); saturation and hue keep a gray image gray. Binomial(400, 0.2): sd 8.
    assert abs(gray.sum() - 80) < 4 * 8
    assert not np.allclose(realistic, weak)
    weak_again = many_views(image, SEEDS[:5], 16).numpy()
    np.testing.assert_array_equal(weak_again, weak[:5])
