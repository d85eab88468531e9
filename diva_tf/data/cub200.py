"""CUB200-2011 from the official folder: `images/NNN.Name/*.jpg`; classes sorted by the numeric
prefix, first half (100) train, second half test (algorithm.md 3.1)."""

from __future__ import annotations

import os
import re

from absl import logging

from diva_tf.data.errors import DataError
from diva_tf.data.imagefiles import list_class_dirs, list_images, require_dir, require_images
from diva_tf.data.splits import half_split

EXPECTED_CLASSES = 200
_PREFIX = re.compile(r"^(\d+)\.")


def images_root(data_dir: str) -> str:
    """The `images/` folder, given CUB_200_2011/ or its parent."""
    require_dir(data_dir, "CUB_200_2011 folder (holding images/) or its parent")
    for candidate in (os.path.join(data_dir, "images"),
                      os.path.join(data_dir, "CUB_200_2011", "images")):
        if os.path.isdir(candidate):
            return candidate
    raise DataError(f"--data_dir={data_dir}: no images/ or CUB_200_2011/images/ folder in it "
                    "(expected the official CUB_200_2011 layout images/NNN.Name/*.jpg)")


def load(options):
    root = images_root(options.data_dir)
    names = list_class_dirs(root)
    unnumbered = [n for n in names if not _PREFIX.match(n)]
    if unnumbered:
        raise DataError(f"{root}: class folders must be named NNN.Name, got {unnumbered[:5]}")
    names.sort(key=lambda n: int(_PREFIX.match(n).group(1)))
    if len(names) != EXPECTED_CLASSES:
        logging.warning("%s: %d class folders, CUB200-2011 has %d; splitting them in half",
                        root, len(names), EXPECTED_CLASSES)
    classes = require_images([(n, list_images(os.path.join(root, n))) for n in names], root)
    return half_split(classes)
