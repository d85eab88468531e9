"""A generic class-per-folder dataset. Split rule: the first floor(C/2) class folders in sorted
order train, the rest test; or explicit --train_classes / --test_classes (one list given: the other
is every remaining class, sorted; both given: exactly those, in the given order).
`split_from_folder` takes every class folder (or the given ones) as one split, e.g. to train on a
whole folder."""

from __future__ import annotations

import os

from absl import logging

from diva_tf.data.errors import DataError
from diva_tf.data.imagefiles import (drop_unreadable, list_class_dirs, list_images, require_dir,
                                     require_images)
from diva_tf.data.splits import Split, half_split, split_from_classes


def split_names(names: list[str], train: list[str], test: list[str]) -> tuple[list, list]:
    """Apply the split rule to sorted class names."""
    if not train and not test:
        return half_split(names)
    unknown = sorted((set(train) | set(test)) - set(names))
    if unknown:
        raise DataError(f"--train_classes/--test_classes name unknown class folder(s) {unknown}; "
                        f"known: {names[:10]}{' ...' if len(names) > 10 else ''}")
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise DataError(f"classes {overlap} are in both --train_classes and --test_classes: "
                        "the splits must be class-disjoint")
    for flag, given in (("--train_classes", train), ("--test_classes", test)):
        if len(set(given)) != len(given):
            raise DataError(f"{flag} lists a class more than once: {given}")
    train = list(train) or [n for n in names if n not in set(test)]
    test = list(test) or [n for n in names if n not in set(train)]
    unused = len(names) - len(train) - len(test)
    if unused:
        logging.info("folder dataset: %d class folder(s) in neither split are ignored", unused)
    return train, test


CLASS_TREE = "dataset folder with one sub-folder of images per class"


def load(options):
    root = require_dir(options.data_dir, CLASS_TREE)
    names = list_class_dirs(root)
    if len(names) < 2 and not (options.train_classes or options.test_classes):
        raise DataError(f"{root}: found {len(names)} class folder(s); need at least 2 (one "
                        "sub-folder of images per class)")
    train, test = split_names(names, [str(c) for c in options.train_classes],
                              [str(c) for c in options.test_classes])
    listed = {n: list_images(os.path.join(root, n)) for n in train + test}
    require_images(list(listed.items()), root)
    return [(n, listed[n]) for n in train], [(n, listed[n]) for n in test]


def split_from_folder(root: str, classes=()) -> Split:
    """One split of the class folders under root (all, sorted; or `classes` in that order),
    unreadable image files skipped with a warning."""
    root = require_dir(root, CLASS_TREE)
    present = list_class_dirs(root)
    names = list(classes) or present
    unknown = sorted(set(names) - set(present))
    if unknown:
        raise DataError(f"{root}: no class folder(s) {unknown}")
    listed = require_images([(n, list_images(os.path.join(root, n))) for n in names], root)
    return split_from_classes(drop_unreadable(listed, root))
