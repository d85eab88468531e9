"""A small learnable image-folder dataset for end-to-end tests: each class is a colour and a
stripe orientation, so an embedding trained on some classes transfers to unseen ones."""

from __future__ import annotations

import colorsys
import os

import numpy as np
from PIL import Image


def class_image(cls: int, n_classes: int, rng: np.random.RandomState, size: int = 40) -> np.ndarray:
    hue = (cls * 0.618034) % 1.0
    angle = np.pi * ((cls * 3) % n_classes) / n_classes
    rgb = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9)) * 255
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.6 + phase)
    img = stripes[..., None] * rgb + (1 - stripes[..., None]) * (255 - rgb) * 0.3
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder_dataset(root: str, n_classes: int = 12, per_class: int = 6, size: int = 40,
                        seed: int = 0) -> str:
    """root/class_XX/img_Y.jpg; returns root."""
    rng = np.random.RandomState(seed)
    for c in range(n_classes):
        d = os.path.join(root, f"class_{c:02d}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(class_image(c, n_classes, rng, size)).save(os.path.join(d, f"img_{i}.jpg"))
    return root
