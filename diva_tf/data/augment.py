"""Image transforms of algorithm.md 3.3 with stateless random ops, so a view depends only on its seed
(reproducible, and independent of tf.data parallelism). Outputs are float32 RGB in 0..255: the
backbone-specific normalisation lives in the model.

- Training view: torchvision RandomResizedCrop (scale (0.08, 1), ratio (3/4, 4/3), 10 attempts
  then the centre-crop fallback; bilinear with antialiasing as PIL) and a horizontal flip, p = 0.5.
- Realistic view (the original's `real_transform`, used by `--realistic_augmentation` for the key
  encoder's view and `--realistic_main_augmentation` for the main view): the same crop, then
  RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4) in a random order of its four operations as
  torchvision does, then the flip.
- Test view: shorter side resized to `resize` (bilinear, aspect kept, torchvision's size rule),
  then the centre `crop` x `crop` (torchvision's CenterCrop offsets).
"""

from __future__ import annotations

import math

import tensorflow as tf

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
ATTEMPTS = 10
GRAYSCALE_P = 0.2
JITTER = 0.4  # brightness, contrast and saturation factors in [0.6, 1.4]; hue shift in [-0.4, 0.4]
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's convert("L")


def _resize(image: tf.Tensor, height, width) -> tf.Tensor:
    """Bilinear with antialiasing (PIL's BILINEAR filter when shrinking), float32."""
    out = tf.image.resize(tf.cast(image, tf.float32), tf.stack([height, width]),
                          method="bilinear", antialias=True)
    return tf.clip_by_value(out, 0.0, 255.0)


def crop_box(seed, height, width, scale=SCALE, ratio=RATIO, attempts=ATTEMPTS):
    """torchvision `RandomResizedCrop.get_params`: (top, left, crop height, crop width), int32.
    All attempts are drawn at once; the first valid one wins, else the centre-crop fallback."""
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    u = tf.random.stateless_uniform([4, attempts], seed, dtype=tf.float64)
    target_area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[1])
    cw = tf.round(tf.sqrt(target_area * aspect))  # round half to even, as Python's round()
    ch = tf.round(tf.sqrt(target_area / aspect))
    valid = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    top = tf.floor(u[2] * (h - ch + 1))
    left = tf.floor(u[3] * (w - cw + 1))
    first = tf.argmax(tf.cast(valid, tf.int32))

    in_ratio = w / h
    fw = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
    fh = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    fallback = tf.stack([tf.floor((h - fh) / 2), tf.floor((w - fw) / 2), fh, fw])
    random = tf.stack([top[first], left[first], ch[first], cw[first]])
    return tf.unstack(tf.cast(tf.where(tf.reduce_any(valid), random, fallback), tf.int32))


def grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma of a float [..., 3] image, kept with one channel."""
    return tf.reduce_sum(image * tf.constant(LUMA, image.dtype), axis=-1, keepdims=True)


def color_jitter(image: tf.Tensor, brightness, contrast, saturation, hue, order) -> tf.Tensor:
    """torchvision's ColorJitter with drawn factors on a float image in 0..255: brightness scales,
    contrast blends with the mean luma, saturation with the per-pixel luma, hue rotates by `hue`
    turns; the four are applied in `order` (a permutation of 0..3), each result clipped."""
    def clip(x):
        return tf.clip_by_value(x, 0.0, 255.0)

    ops = [
        lambda x: clip(x * brightness),
        lambda x: clip(contrast * x + (1.0 - contrast) * tf.reduce_mean(grayscale(x))),
        lambda x: clip(saturation * x + (1.0 - saturation) * grayscale(x)),
        lambda x: clip(tf.image.adjust_hue(x / 255.0, hue) * 255.0),
    ]
    for i in range(4):
        image = tf.switch_case(order[i], [lambda op=op, x=image: op(x) for op in ops])
    return image


def realistic_colors(image: tf.Tensor, seed) -> tf.Tensor:
    """RandomGrayscale(0.2) then ColorJitter(0.4, 0.4, 0.4, 0.4) with stateless draws."""
    gray_seed, factor_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    gray = tf.random.stateless_uniform([], gray_seed) < GRAYSCALE_P
    image = tf.where(gray, tf.broadcast_to(grayscale(image), tf.shape(image)), image)
    u = tf.random.stateless_uniform([4], factor_seed, minval=-JITTER, maxval=JITTER)
    order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
    return color_jitter(image, 1.0 + u[0], 1.0 + u[1], 1.0 + u[2], u[3], order)


def train_view(image: tf.Tensor, seed, size: int, realistic: bool = False) -> tf.Tensor:
    """One random resized crop (+ the realistic colours) + flip of a uint8 [h, w, 3] image ->
    float32 [size, size, 3]."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    top, left, ch, cw = crop_box(crop_seed, shape[0], shape[1])
    out = _resize(image[top:top + ch, left:left + cw], size, size)
    if realistic:
        out = realistic_colors(out, tf.random.experimental.stateless_fold_in(seed, 2))
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    return tf.ensure_shape(tf.where(flip, tf.reverse(out, axis=[1]), out), [size, size, 3])


def resized_shape(height, width, size: int):
    """torchvision Resize(size): shorter side -> size, longer side int(size * long / short)."""
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    short = tf.minimum(h, w)
    size = tf.constant(size, tf.float64)
    new_h = tf.where(h <= w, size, tf.floor(size * h / short))
    new_w = tf.where(h <= w, tf.floor(size * w / short), size)
    return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def test_view(image: tf.Tensor, resize: int, crop: int) -> tf.Tensor:
    """Resize the shorter side to `resize`, then the centre crop x crop; float32."""
    shape = tf.shape(image)
    new_h, new_w = resized_shape(shape[0], shape[1], resize)
    out = _resize(image, new_h, new_w)
    top = tf.cast(tf.round(tf.cast(new_h - crop, tf.float64) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - crop, tf.float64) / 2), tf.int32)
    return tf.ensure_shape(out[top:top + crop, left:left + crop], [crop, crop, 3])
