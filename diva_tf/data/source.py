"""Where a pipeline gets a split's pixels from: `image_source(split, cache_images).load(index)`
gives the uint8 RGB image [h, w, 3] (grayscale and palette images expanded, alpha dropped, as
PIL's convert("RGB")).

A split of in-memory uint8 arrays (`split_from_arrays`) is held as it is. Otherwise, with
--cache_images, the decoded pixels of a split are held in memory when they fit the budget
(e.g. emoji at 64 px); otherwise its encoded files are (e.g. full-size CUB); otherwise images are
read from disk at every use. Every mode decodes with the same TensorFlow op, so the pixels and
therefore the batches do not depend on the mode. The source is memoised on the split, so the
evaluation pipeline built every epoch reuses it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

CACHE_BUDGET_MAX = 1 << 30  # bytes per split; tf.data graphs holding more get unwieldy
_SIZE_SAMPLE = 64


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    return tf.ensure_shape(image, [None, None, 3])


def cache_budget() -> int:
    """Bytes one split may cache: a quarter of the available memory, at most CACHE_BUDGET_MAX."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        available = 4 << 30
    return min(CACHE_BUDGET_MAX, available // 4)


def _open(image) -> Image.Image:
    return Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)


def estimate_decoded_bytes(images: list) -> int:
    """Decoded RGB size of all images, extrapolated from the headers of a spread-out sample."""
    if not images:
        return 0
    picks = np.unique(np.linspace(0, len(images) - 1, _SIZE_SAMPLE).astype(int))
    pixels = []
    for i in picks:
        with _open(images[i]) as im:
            pixels.append(im.size[0] * im.size[1])
    return int(np.mean(pixels) * 3 * len(images))


def encoded_bytes(images: list) -> int:
    return sum(len(x) if isinstance(x, bytes) else os.path.getsize(x) for x in images)


@dataclass(frozen=True)
class ImageSource:
    """`load(index)` -> uint8 [h, w, 3]; build with `image_source`."""

    load: Callable
    mode: str


def _in_memory(images: list) -> bool:
    return bool(images) and isinstance(images[0], bytes)


def _arrays(images: list) -> bool:
    return bool(images) and isinstance(images[0], np.ndarray)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _file_source(paths: list[str]) -> ImageSource:
    paths_t = tf.constant(paths)
    return ImageSource(lambda i: decode_rgb(tf.io.read_file(tf.gather(paths_t, i))), "files")


def _bytes_source(blobs: list[bytes]) -> ImageSource:
    data = tf.constant(blobs)
    return ImageSource(lambda i: decode_rgb(tf.gather(data, i)), "encoded")


def _decode_all(source: ImageSource, n: int) -> list[np.ndarray]:
    ds = tf.data.Dataset.range(n).map(source.load, num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True)
    return list(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator())


def _decoded_source(arrays: list[np.ndarray]) -> ImageSource:
    """All images in one flat uint8 buffer, sliced by offset and shape."""
    shapes = np.array([a.shape[:2] for a in arrays], np.int64).reshape(-1, 2)
    sizes = shapes[:, 0] * shapes[:, 1] * 3
    offsets = tf.constant(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
    buffer = tf.constant(np.concatenate([a.reshape(-1) for a in arrays]) if arrays
                         else np.zeros(0, np.uint8))
    shapes_t = tf.constant(shapes)

    def load(i):
        shape = tf.gather(shapes_t, i)
        flat = tf.slice(buffer, [tf.gather(offsets, i)], [shape[0] * shape[1] * 3])
        return tf.reshape(flat, tf.concat([shape, [3]], axis=0))

    return ImageSource(load, "decoded")


def choose_mode(images: list, cache: bool, budget: int) -> str:
    """'decoded', 'encoded' or 'files' (see the module docstring)."""
    in_memory = _in_memory(images)
    if not cache:
        return "encoded" if in_memory else "files"
    if estimate_decoded_bytes(images) <= budget:
        return "decoded"
    return "encoded" if in_memory or encoded_bytes(images) <= budget else "files"


def image_source(split, cache_images: bool = True) -> ImageSource:
    """The split's ImageSource (see the module docstring), built once per split."""
    key = ("image_source", bool(cache_images))
    if key in split.memo:
        return split.memo[key]
    images = split.images
    in_memory = _in_memory(images)
    mode = "arrays" if _arrays(images) else choose_mode(images, cache_images, cache_budget())
    if mode == "arrays":
        source = _decoded_source([np.asarray(a, np.uint8) for a in images])
    elif mode == "files":
        source = _file_source(images)
    elif mode == "encoded":
        source = _bytes_source(images if in_memory else [_read(p) for p in images])
    else:
        arrays = _decode_all(_bytes_source(images) if in_memory else _file_source(images),
                             len(images))
        source = _decoded_source(arrays)
        logging.info("caching %d decoded images (%.1f MB) in memory", len(arrays),
                     sum(a.nbytes for a in arrays) / 2**20)
    logging.debug("%d images read from: %s", len(images), source.mode)
    split.memo[key] = source
    return source
