"""CUB200, CARS196 and SOP from prepared tensorflow-datasets (`--tfds_data_dir`), as encoded image
bytes. CUB and CARS: both tfds splits pooled, then re-split by label id (first half of the label
ids train) as DiVA splits the folders; SOP: the tfds train/test splits are Ebay_train/Ebay_test.
tensorflow_datasets is imported only here, and only when this source is used."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from absl import logging

from diva_tf.data.errors import DataError


@dataclass(frozen=True)
class TfdsLayout:
    name: str
    label_key: str
    pooled: bool  # pool every split and re-split by label id; else use the train/test splits
    class_name: Callable  # (label id, example name or None, ClassLabel feature) -> str
    name_key: str | None = None


LAYOUTS = {
    "cub200": TfdsLayout("caltech_birds2011", "label", True,
                         lambda i, n, _: f"{i + 1:03d}.{n}", name_key="label_name"),
    "cars196": TfdsLayout("cars196", "label", True, lambda i, _, f: f.int2str(i)),
    "sop": TfdsLayout("stanford_online_products", "class_id", False, lambda i, _, f: str(i + 1)),
}


def _read(builder, split: str, layout: TfdsLayout) -> list[tuple[int, bytes, str | None]]:
    """(label, encoded image, name) for every example of a split, images left undecoded."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
                if isinstance(f, tfds.features.Image)}
    ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    ds = ds.map(lambda ex: (ex[layout.label_key], ex["image"],
                            ex[layout.name_key] if layout.name_key else ""))
    return [(int(label), bytes(image), name.decode() if layout.name_key else None)
            for label, image, name in tfds.as_numpy(ds)]


def _group(rows, layout: TfdsLayout, feature) -> tuple[list[int], list]:
    """(label ids, ClassList), both in label-id order."""
    images: dict[int, list[bytes]] = {}
    names: dict[int, str | None] = {}
    for label, image, name in rows:
        images.setdefault(label, []).append(image)
        names.setdefault(label, name)
    ids = sorted(images)
    return ids, [(layout.class_name(i, names[i], feature), images[i]) for i in ids]


def require_prepared(name: str, tfds_data_dir: str) -> None:
    """DataError unless tfds_data_dir holds the catalog version of dataset `name`. Checked before
    building the tfds builder, which would otherwise fall back to its code-only metadata."""
    import tensorflow_datasets as tfds

    version = str(tfds.builder_cls(name).VERSION)
    folder = os.path.join(tfds_data_dir, name)
    if os.path.isfile(os.path.join(folder, version, "dataset_info.json")):
        return
    found = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    raise DataError(
        f"--tfds_data_dir={tfds_data_dir}: tfds dataset {name} {version} is not prepared there "
        f"(expected {os.path.join(folder, version)}{'; found ' + ', '.join(found) if found else ''}"
        f"). Prepare it first (tfds build {name} --data_dir={tfds_data_dir}, where its source "
        "files can be downloaded), or use --data_dir with the official folder instead")


def load(dataset: str, tfds_data_dir: str):
    """(train ClassList, test ClassList) of `dataset` read from tfds_data_dir."""
    import tensorflow_datasets as tfds

    layout = LAYOUTS[dataset]
    require_prepared(layout.name, tfds_data_dir)
    builder = tfds.builder(layout.name, data_dir=tfds_data_dir)
    feature = builder.info.features[layout.label_key]
    splits = list(builder.info.splits)
    logging.info("reading tfds %s %s (splits %s) from %s", layout.name, builder.version, splits,
                 tfds_data_dir)
    if layout.pooled:
        rows = [r for s in splits for r in _read(builder, s, layout)]
        ids, classes = _group(rows, layout, feature)
        cut = sum(1 for i in ids if i < feature.num_classes // 2)
        return classes[:cut], classes[cut:]
    return tuple(_group(_read(builder, s, layout), layout, feature)[1] for s in ("train", "test"))
