"""Class-disjoint splits: the common representation every dataset loader produces, and the pure
class-list transforms (half split, validation carve-out, debug cap) of algorithm.md 3.1.

Loaders describe a split as a `ClassList`: `(class name, images)` pairs in split-rule order, where
an image is a file path (str) or its encoded bytes. `split_from_arrays` makes a split of in-memory
uint8 RGB arrays. `split_from_classes` turns that into a `Split`
with contiguous labels 0..C-1 in that order, which is what the per-class margin parameters are
indexed by.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diva_tf.data.errors import DataError

ClassList = list  # list[tuple[str, list[str | bytes]]]


@dataclass(eq=False)
class Split:
    """Images (paths or encoded bytes), int32 labels 0..C-1, and the C class names."""

    images: list
    labels: np.ndarray
    class_names: list
    # Per-split memo (e.g. the decoded-image cache), so pipelines built every epoch reuse it.
    memo: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int32)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self) -> str:
        return f"Split({len(self)} images, {self.num_classes} classes)"


@dataclass
class Splits:
    train: Split
    test: Split
    val: Split | None = None


def split_from_classes(classes: ClassList) -> Split:
    """Flatten a ClassList; labels follow the list order."""
    images, labels = [], []
    for label, (_, class_images) in enumerate(classes):
        images.extend(class_images)
        labels.extend([label] * len(class_images))
    return Split(images=images, labels=np.asarray(labels, np.int32),
                 class_names=[name for name, _ in classes])


def split_from_arrays(images, labels, class_names=None) -> Split:
    """A split of in-memory images: uint8 RGB [n, h, w, 3] (or a list of [h_i, w_i, 3]) with any
    n labels (ints or strings). Labels become 0..C-1 in sorted order of their values; class_names
    defaults to those values as strings."""
    arrays = [np.asarray(a) for a in images]
    labels = np.asarray(labels).reshape(-1)
    bad = next((a.shape for a in arrays if a.ndim != 3 or a.shape[-1] != 3), None)
    if bad is not None or len(arrays) != len(labels):
        raise DataError(f"expected {len(labels)} RGB images of shape [h, w, 3] for {len(labels)} "
                        f"labels, got {len(arrays)} images"
                        + (f" (one of shape {bad})" if bad else ""))
    values, index = np.unique(labels, return_inverse=True)
    names = [str(v) for v in values] if class_names is None else list(class_names)
    if len(names) != len(values):
        raise DataError(f"{len(names)} class names for {len(values)} distinct labels")
    return Split(images=[a.astype(np.uint8) for a in arrays], labels=index.astype(np.int32),
                 class_names=names)


def concat_splits(*splits: Split) -> Split:
    """One split holding every class of `splits`, in order (labels offset, class names kept)."""
    images, labels, names = [], [], []
    for split in splits:
        images.extend(split.images)
        labels.append(split.labels + len(names))
        names.extend(split.class_names)
    return Split(images=images, labels=np.concatenate(labels), class_names=names)


def half_split(classes: list) -> tuple[list, list]:
    """First floor(C/2) classes train, the rest test (DiVA's rule for CUB, CARS and emoji)."""
    n_train = len(classes) // 2
    return classes[:n_train], classes[n_train:]


def carve_validation(train: ClassList, fraction: float) -> tuple[ClassList, ClassList | None]:
    """Move the last round(fraction * C) training classes (at least one) to a validation split."""
    if fraction <= 0:
        return train, None
    n_val = max(1, int(round(fraction * len(train))))
    if len(train) - n_val < 2:
        raise DataError(f"--val_classes_fraction={fraction} takes {n_val} of the {len(train)} "
                        "training classes, leaving fewer than 2 to train on: lower it")
    return train[:-n_val], train[-n_val:]


def cap_images(classes: ClassList, max_images: int) -> ClassList:
    """At most max_images images: whole classes in order; the class crossing the cap is cut,
    and kept only if at least 2 of its images fit (a 1-image class has no positive pair)."""
    if max_images <= 0:
        return classes
    kept, total = [], 0
    for name, images in classes:
        room = max_images - total
        if len(images) <= room:
            kept.append((name, images))
            total += len(images)
        else:
            if room >= 2 or not kept:
                kept.append((name, images[:room]))
            break
    return kept
