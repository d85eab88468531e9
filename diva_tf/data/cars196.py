"""CARS196 in the layout of DiVA's prepared tar: one folder per class (under `images/` or directly
under --data_dir), classes in Python string order of the folder names, first half (98) train."""

from __future__ import annotations

import os

from absl import logging

from diva_tf.data.imagefiles import list_class_dirs, list_images, require_dir, require_images
from diva_tf.data.splits import half_split

EXPECTED_CLASSES = 196


def load(options):
    root = require_dir(options.data_dir, "CARS196 folder (one sub-folder per class, or images/)")
    if os.path.isdir(os.path.join(root, "images")):
        root = os.path.join(root, "images")
    names = list_class_dirs(root)
    if len(names) != EXPECTED_CLASSES:
        logging.warning("%s: %d class folders, CARS196 has %d; splitting them in half",
                        root, len(names), EXPECTED_CLASSES)
    classes = require_images([(n, list_images(os.path.join(root, n))) for n in names], root)
    return half_split(classes)
