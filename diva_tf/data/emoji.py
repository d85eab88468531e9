"""The emoji dataset prepared by `python -m diva_tf.data.prepare emoji --out DIR`: one class per
emoji, one image per vendor drawing (DIR/images/<class folder>/<vendor>.png). Classes in emoji
sort_order (the manifest's order); first half train, second half test."""

from __future__ import annotations

import json
import os

from diva_tf.data.errors import DataError
from diva_tf.data.splits import half_split

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
IMAGES = "images"


def read_manifest(folder: str) -> dict | None:
    """The manifest of a prepared folder, or None if there is none (or an older format)."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == MANIFEST_FORMAT else None


def not_prepared(folder: str) -> DataError:
    return DataError(f"{folder or '--data_dir'} is not a prepared emoji folder (no valid "
                     f"{MANIFEST}): run python -m diva_tf.data.prepare emoji --out "
                     f"{folder or 'DIR'} first")


def load(options):
    manifest = read_manifest(options.data_dir) if options.data_dir else None
    if manifest is None:
        raise not_prepared(options.data_dir)
    root = os.path.join(options.data_dir, IMAGES)
    classes = [(c["folder"], [os.path.join(root, c["folder"], f"{v}.png")
                              for v in manifest["vendors"]])
               for c in manifest["classes"]]
    return half_split(classes)
