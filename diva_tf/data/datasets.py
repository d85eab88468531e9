"""`load_splits(options)`: the dataset of `DataOptions` (--dataset) as class-disjoint train /
(val) / test splits.

Order of operations: the dataset's split rule (algorithm.md 3.1), the optional validation carve-out from
the end of the training classes, the --max_images debug cap, then the readability check of image
files (unreadable ones skipped with one warning).
"""

from __future__ import annotations

import os

from absl import logging

from diva_tf.core.choices import lookup
from diva_tf.data import cars196, cub200, emoji, folder, sop, tfds_source
from diva_tf.data.errors import DataError
from diva_tf.data.imagefiles import drop_unreadable, list_class_dirs
from diva_tf.data.splits import Splits, cap_images, carve_validation, split_from_classes

# --dataset name -> loader(DataOptions) -> (train ClassList, test ClassList): the one dataset
# registry.
DATASETS = {"cub200": cub200.load, "cars196": cars196.load, "sop": sop.load,
            "folder": folder.load, "emoji": emoji.load}
MIN_CLASSES = {"train": 2, "val": 1, "test": 1}


def load_classes(options) -> tuple[list, list]:
    """(train ClassList, test ClassList) of `DataOptions` by the dataset's split rule."""
    load = lookup(DATASETS, "dataset", options.dataset, "dataset", DataError)
    if options.tfds_data_dir:
        if options.dataset in tfds_source.LAYOUTS:
            return tfds_source.load(options.dataset, options.tfds_data_dir)
        logging.warning("--tfds_data_dir is ignored for --dataset=%s", options.dataset)
    return load(options)


def dataset_in(data_dir: str, default: str) -> str:
    """The dataset a folder holds, read from the folder: 'emoji' for a prepared emoji folder,
    'folder' for any other folder of class folders, else `default` (the catalog datasets' folders,
    whose layout their loaders check). Lets a model trained on one dataset be evaluated on a
    folder of another."""
    if emoji.read_manifest(data_dir) is not None:
        return "emoji"
    if default in ("emoji", "folder") and os.path.isdir(data_dir) and list_class_dirs(data_dir):
        return "folder"
    return default


def check_classes(classes: list, what: str, min_classes: int) -> None:
    """DataError if too few classes; a warning naming single-image classes."""
    if len(classes) < min_classes:
        raise DataError(f"{what} split has {len(classes)} class(es) with images; it needs at "
                        f"least {min_classes}")
    single = [name for name, images in classes if len(images) == 1]
    if single:
        logging.warning("%s split: %d class(es) have a single image (e.g. %s): with replacement "
                        "sampling their pair repeats that image; class_without_replacement skips "
                        "them", what, len(single), ", ".join(single[:3]))


def load_splits(options) -> Splits:
    """Splits of the dataset of `options` (`DataOptions`); raises DataError for anything a user
    must fix."""
    train, test = load_classes(options)
    train, val = carve_validation(train, options.val_classes_fraction)
    splits = {}
    for name, classes in (("train", train), ("val", val), ("test", test)):
        if classes is None:
            continue
        what = f"{options.dataset} {name}"
        classes = drop_unreadable(cap_images(classes, options.max_images), what)
        check_classes(classes, what, MIN_CLASSES[name])
        splits[name] = split_from_classes(classes)
        logging.info("%s: %d images, %d classes", what, len(splits[name]),
                     splits[name].num_classes)
    return Splits(**splits)
