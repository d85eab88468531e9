"""The tensorflow-datasets source, read from tiny tfds datasets built here offline.

`tfds.testing.mock_data` cannot be used: its random examples violate caltech_birds2011's bbox
feature. Instead, subclasses of the catalog builders (same name, version and features, with fake
examples) are prepared into a temporary data_dir, which the real catalog builders then read,
exactly as they would read a genuinely prepared dataset.
"""

from __future__ import annotations

import tempfile
from unittest import mock

import numpy as np
import pytest

from diva_tf.config import Config
from diva_tf.data import DataError, eval_dataset, load_splits
from fixtures_data import class_color, image_bytes, isolated_cache  # noqa: F401

tfds = pytest.importorskip("tensorflow_datasets")

CUB_LABELS = {"train": [0, 1, 150, 99], "test": [199, 100, 1, 0]}
CARS_LABELS = {"train": [0, 97, 98, 195], "test": [5, 120, 97]}
SOP_IDS = {"train": [0, 1, 2, 2], "test": [11318, 11319, 11319]}


def _build_all(data_dir: str) -> None:
    from tensorflow_datasets.core import registered
    from tensorflow_datasets.datasets.stanford_online_products import (
        stanford_online_products_dataset_builder as sop)
    from tensorflow_datasets.image_classification.caltech_birds import CaltechBirds2011
    from tensorflow_datasets.image_classification.cars196 import Cars196

    bbox = tfds.features.BBox(0.0, 0.0, 1.0, 1.0)

    def generators(labels, example):
        return {split: ((f"{split}{k}", example(label, k)) for k, label in enumerate(ids))
                for split, ids in labels.items()}

    with registered.skip_registration():
        class FakeBirds(CaltechBirds2011):
            name = "caltech_birds2011"

            def _split_generators(self, dl_manager):
                return generators(CUB_LABELS, lambda y, k: {
                    "image": image_bytes(y), "image/filename": f"{k}.jpg", "label": y,
                    "label_name": f"bird_{y}", "bbox": bbox,
                    "segmentation_mask": np.zeros((20, 24, 1), np.uint8)})

        class FakeCars(Cars196):
            name = "cars196"

            def _split_generators(self, dl_manager):
                return generators(CARS_LABELS, lambda y, k: {
                    "image": image_bytes(y), "label": y, "bbox": bbox, "id": str(k)})

        class FakeSop(sop.Builder):
            name = "stanford_online_products"
            pkg_dir_path = sop.Builder._get_pkg_dir_path()

            def _split_generators(self, dl_manager):
                return generators(SOP_IDS, lambda y, k: {
                    "image": image_bytes(y % 200), "class_id": y, "super_class_id/num": 0,
                    "super_class_id": "bicycle"})

    tfds.disable_progress_bar()
    for builder in (FakeBirds, FakeCars, FakeSop):
        builder(data_dir=data_dir).download_and_prepare()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    # tfds leaves an empty temporary folder per unprepared builder: keep them in tmp_path.
    with mock.patch.object(tempfile, "tempdir", str(tmp_path_factory.mktemp("tfds_tmp"))):
        _build_all(path)
    return path


def load(dataset, tfds_dir, **kw):
    return load_splits(Config(dataset=dataset, tfds_data_dir=tfds_dir, **kw))


def decoded_colors(split):
    """Mean RGB of every image of the split, decoded by the eval pipeline."""
    cfg = Config(resize=20, crop=16)
    return np.concatenate([x.numpy().mean(axis=(1, 2)) for x, _ in eval_dataset(split, cfg, 4)])


def test_cub200_pools_tfds_splits_and_resplits_by_label(tfds_dir):
    splits = load("cub200", tfds_dir)
    assert splits.train.class_names == ["001.bird_0", "002.bird_1", "100.bird_99"]
    assert splits.test.class_names == ["101.bird_100", "151.bird_150", "200.bird_199"]
    assert splits.train.class_counts().tolist() == [2, 2, 1]  # 0 and 1: in both tfds splits
    assert all(isinstance(x, bytes) for x in splits.train.images)
    for split, ids in ((splits.train, [0, 1, 99]), (splits.test, [100, 150, 199])):
        expected = np.array([class_color(ids[y]) for y in split.labels], np.float32)
        np.testing.assert_allclose(decoded_colors(split), expected, atol=8)


def test_cars196_first_98_label_ids_train(tfds_dir):
    splits = load("cars196", tfds_dir)
    names = tfds.builder("cars196", data_dir=tfds_dir).info.features["label"].names
    assert splits.train.class_names == [names[i] for i in (0, 5, 97)]
    assert splits.test.class_names == [names[i] for i in (98, 120, 195)]
    assert splits.train.class_counts().tolist() == [1, 1, 2]


def test_sop_uses_the_tfds_train_and_test_splits(tfds_dir):
    splits = load("sop", tfds_dir)
    assert splits.train.class_names == ["1", "2", "3"]
    assert splits.train.labels.tolist() == [0, 1, 2, 2]
    assert splits.test.class_names == ["11319", "11320"]
    assert splits.test.labels.tolist() == [0, 1, 1]


def test_tfds_source_with_validation_split(tfds_dir):
    splits = load("cub200", tfds_dir, val_classes_fraction=0.34)
    assert splits.val.class_names == ["100.bird_99"]
    assert splits.train.class_names == ["001.bird_0", "002.bird_1"]
    assert splits.train.labels.tolist() == [0, 0, 1, 1] and splits.val.labels.tolist() == [0]


def test_unprepared_tfds_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="caltech_birds2011 0.2.0 is not prepared there"):
        load("cub200", str(tmp_path))
    (tmp_path / "cars196" / "1.0.0").mkdir(parents=True)
    with pytest.raises(DataError, match=r"cars196 2.1.0 is not prepared .*; found 1.0.0"):
        load("cars196", str(tmp_path))
