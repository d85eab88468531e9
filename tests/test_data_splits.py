"""Dataset layouts and split rules (algorithm.md 3.1), validation carve-out, debug cap, bad inputs."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from diva_tf.config import Config
from diva_tf.data import DataError, load_splits
from diva_tf.data import imagefiles
from diva_tf.data.splits import cap_images, carve_validation
from fixtures_data import (cub_names, isolated_cache, make_class_tree, make_cub,  # noqa: F401
                           make_sop, write_image)


def cfg_for(dataset, data_dir, **kw):
    return Config(dataset=dataset, data_dir=str(data_dir), **kw)


def folder_of(path):
    return os.path.basename(os.path.dirname(path))


def assert_consistent(split, expected_names):
    """Class names in order, contiguous labels, and every image in its label's folder."""
    assert split.class_names == expected_names
    assert split.labels.dtype == np.int32
    assert sorted(set(split.labels.tolist())) == list(range(len(expected_names)))
    for path, label in zip(split.images, split.labels):
        assert folder_of(path) == split.class_names[label]


# ---- layouts -------------------------------------------------------------------------------

@pytest.mark.parametrize("point_at", ["parent", "cub_folder"])
def test_cub200_first_half_of_classes_by_numeric_prefix_is_train(tmp_path, point_at):
    root = make_cub(str(tmp_path), n_classes=6, per_class=2)
    data_dir = root if point_at == "parent" else os.path.join(root, "CUB_200_2011")
    splits = load_splits(cfg_for("cub200", data_dir))
    names = cub_names(6)
    assert_consistent(splits.train, names[:3])
    assert_consistent(splits.test, names[3:])
    assert len(splits.train) == 6 and len(splits.test) == 6 and splits.val is None


def test_cub200_sorts_numerically_not_as_strings(tmp_path):
    names = ["1.Alpha", "2.Beta", "10.Gamma", "11.Delta"]
    make_class_tree(str(tmp_path / "images"), {n: 1 for n in names})
    splits = load_splits(cfg_for("cub200", tmp_path))
    assert splits.train.class_names == ["1.Alpha", "2.Beta"]
    assert splits.test.class_names == ["10.Gamma", "11.Delta"]


def test_cub200_rejects_unnumbered_class_folders(tmp_path):
    make_class_tree(str(tmp_path / "images"), {"001.A": 1, "B": 1})
    with pytest.raises(DataError, match="NNN.Name"):
        load_splits(cfg_for("cub200", tmp_path))


@pytest.mark.parametrize("under_images", [False, True])
def test_cars196_python_string_order_first_half_train(tmp_path, under_images):
    names = ["audi a4", "BMW 1", "AM General Hummer", "Acura X", "Volvo", "Aston"]
    make_class_tree(str(tmp_path / "images") if under_images else str(tmp_path),
                    {n: 2 for n in names})
    splits = load_splits(cfg_for("cars196", tmp_path))
    ordered = sorted(names)  # 'AM General Hummer' < 'Acura X' < 'Aston' < 'BMW 1' < ...
    assert_consistent(splits.train, ordered[:3])
    assert_consistent(splits.test, ordered[3:])


@pytest.mark.parametrize("info_files", [True, False])
def test_sop_lists_give_splits_in_class_id_order(tmp_path, info_files):
    root = make_sop(str(tmp_path), train_ids=(5, 2, 9), test_ids=(12, 11), per_class=3,
                    info_files=info_files)
    splits = load_splits(cfg_for("sop", root))
    assert splits.train.class_names == ["2", "5", "9"]
    assert splits.test.class_names == ["11", "12"]
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for split in (splits.train, splits.test):
        for path, label in zip(split.images, split.labels):
            assert os.path.basename(path).split("_")[0] == split.class_names[label]


def test_sop_bad_lists(tmp_path):
    root = make_sop(str(tmp_path), info_files=False)
    with open(os.path.join(root, "Ebay_test.txt"), "a") as f:
        f.write("99 notanumber 1 x.jpg\n")
    with pytest.raises(DataError, match=r"Ebay_test.txt:\d+: malformed"):
        load_splits(cfg_for("sop", root))
    os.remove(os.path.join(root, "Ebay_test.txt"))
    with pytest.raises(DataError, match="Ebay_train.txt and Ebay_test.txt not found"):
        load_splits(cfg_for("sop", root))


def test_folder_default_split_is_floor_half_of_sorted_names(tmp_path):
    make_class_tree(str(tmp_path), {n: 2 for n in ["e", "c", "a", "d", "b"]})
    splits = load_splits(cfg_for("folder", tmp_path))
    assert_consistent(splits.train, ["a", "b"])
    assert_consistent(splits.test, ["c", "d", "e"])


def test_folder_images_in_subfolders_and_other_files(tmp_path):
    make_class_tree(str(tmp_path), {"a": 1, "b": 1, "c": 1, "d": 1})
    write_image(str(tmp_path / "a" / "nested" / "x.png"), 0)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    splits = load_splits(cfg_for("folder", tmp_path))
    in_a = [os.path.basename(p) for p, y in zip(splits.train.images, splits.train.labels) if y == 0]
    assert in_a == ["img_0.jpg", "x.png"]


@pytest.mark.parametrize("train,test,expect_train,expect_test", [
    (["d", "a"], [], ["d", "a"], ["b", "c", "e"]),
    ([], ["b"], ["a", "c", "d", "e"], ["b"]),
    (["e", "b"], ["a"], ["e", "b"], ["a"]),
])
def test_folder_explicit_class_lists(tmp_path, train, test, expect_train, expect_test):
    make_class_tree(str(tmp_path), {n: 2 for n in "abcde"})
    splits = load_splits(cfg_for("folder", tmp_path, train_classes=train, test_classes=test))
    assert_consistent(splits.train, expect_train)
    assert_consistent(splits.test, expect_test)


@pytest.mark.parametrize("train,test,message", [
    (["a", "b"], ["b", "c"], r"\['b'\] are in both"),
    (["a", "zz"], [], r"unknown class folder\(s\) \['zz'\]"),
    (["a", "a", "b"], [], "more than once"),
])
def test_folder_bad_class_lists(tmp_path, train, test, message):
    make_class_tree(str(tmp_path), {n: 2 for n in "abcd"})
    with pytest.raises(DataError, match=message):
        load_splits(cfg_for("folder", tmp_path, train_classes=train, test_classes=test))


# ---- validation split and debug cap ----------------------------------------------------------

def test_validation_split_is_the_last_training_classes(tmp_path):
    names = [f"c{i:02d}" for i in range(10)]
    make_class_tree(str(tmp_path), {n: 2 for n in names})
    splits = load_splits(cfg_for("folder", tmp_path, val_classes_fraction=0.4))
    assert_consistent(splits.train, names[:3])
    assert_consistent(splits.val, names[3:5])
    assert_consistent(splits.test, names[5:])


def test_carve_validation_bounds():
    classes = [(str(i), ["x"]) for i in range(4)]
    train, val = carve_validation(classes, 0.1)
    assert [n for n, _ in val] == ["3"] and len(train) == 3
    with pytest.raises(DataError, match="fewer than 2"):
        carve_validation(classes, 0.7)
    assert carve_validation(classes, 0.0) == (classes, None)


def test_cap_images_keeps_whole_classes_then_cuts_one():
    classes = [(c, [f"{c}{k}" for k in range(3)]) for c in "abcd"]
    assert [len(i) for _, i in cap_images(classes, 7)] == [3, 3]  # 1 left: no 1-image class
    assert [len(i) for _, i in cap_images(classes, 8)] == [3, 3, 2]
    assert [len(i) for _, i in cap_images(classes, 2)] == [2]
    assert cap_images(classes, 0) == classes


def test_max_images_caps_each_split(tmp_path):
    make_class_tree(str(tmp_path), {f"c{i}": 3 for i in range(8)})
    splits = load_splits(cfg_for("folder", tmp_path, max_images=7))
    assert len(splits.train) == 6 and splits.train.num_classes == 2
    assert len(splits.test) == 6 and splits.test.class_names == ["c4", "c5"]


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["cub200", "cars196", "sop", "folder"])
def test_missing_or_unset_data_dir(tmp_path, dataset):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(cfg_for(dataset, tmp_path / "nope"))
    with pytest.raises(DataError, match="--data_dir is not set"):
        load_splits(Config(dataset=dataset, data_dir=""))


def test_empty_folders(tmp_path):
    with pytest.raises(DataError, match="found 0 class folder"):
        load_splits(cfg_for("folder", tmp_path))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_splits(cfg_for("folder", tmp_path))
    with pytest.raises(DataError, match="no images/ or CUB_200_2011/images/"):
        load_splits(cfg_for("cub200", tmp_path))


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        load_splits(Config(dataset="imagenet", data_dir="/tmp"))


def test_unprepared_emoji_folder(tmp_path):
    with pytest.raises(DataError, match="run python -m diva_tf.data.prepare emoji --out"):
        load_splits(cfg_for("emoji", tmp_path))


def _corrupt_tree(root):
    make_class_tree(root, {"a": 3, "b": 3, "c": 3, "d": 1})
    with open(os.path.join(root, "a", "img_1.jpg"), "w") as f:
        f.write("this is text, not a JPEG")
    data = open(os.path.join(root, "b", "img_0.jpg"), "rb").read()
    with open(os.path.join(root, "b", "img_2.jpg"), "wb") as f:
        f.write(data[: len(data) // 3])
    write_image(os.path.join(root, "c", "img_1.jpg"), 2, size=(80, 60))
    data = open(os.path.join(root, "c", "img_1.jpg"), "rb").read()
    with open(os.path.join(root, "c", "img_1.jpg"), "wb") as f:  # header intact, scan cut short
        f.write(data[: int(len(data) * 0.9)])
    write_image(os.path.join(root, "c", "img_9.png"), 0)
    os.rename(os.path.join(root, "c", "img_9.png"), os.path.join(root, "c", "tmp.tif"))
    from PIL import Image
    Image.open(os.path.join(root, "c", "tmp.tif")).save(os.path.join(root, "c", "img_9.png"),
                                                        format="TIFF")
    os.remove(os.path.join(root, "c", "tmp.tif"))


def test_unreadable_files_skipped_with_one_warning(tmp_path, caplog):
    _corrupt_tree(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        splits = load_splits(cfg_for("folder", tmp_path))
    skipped = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(skipped) == 2  # one per split, each with count and examples
    assert "skipping 2 unreadable image file(s)" in skipped[0]
    assert "img_1.jpg" in skipped[0] and "img_2.jpg" in skipped[0]
    assert "skipping 2 unreadable" in skipped[1] and "TIFF images cannot be decoded" in skipped[1]
    assert "img_1.jpg (OSError: image file is truncated" in skipped[1]
    assert splits.train.class_counts().tolist() == [2, 2]
    assert splits.test.class_counts().tolist() == [2, 1]
    single = [r.getMessage() for r in caplog.records if "single image" in r.getMessage()]
    assert single and "1 class(es)" in single[0] and "d" in single[0]


def test_class_with_only_unreadable_files_is_dropped(tmp_path, caplog):
    make_class_tree(str(tmp_path), {n: 2 for n in "abcdef"})
    for k in range(2):
        (tmp_path / "b" / f"img_{k}.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        splits = load_splits(cfg_for("folder", tmp_path))
    assert_consistent(splits.train, ["a", "c"])
    assert "dropping 1 class(es) with no readable image: b" in caplog.text


def test_image_check_is_cached_per_file(tmp_path, monkeypatch):
    make_class_tree(str(tmp_path / "d"), {"a": 2})
    paths = imagefiles.list_images(str(tmp_path / "d" / "a"))
    assert imagefiles.check_images(paths) == {}

    def boom(path):
        raise AssertionError(f"re-probed {path}")

    monkeypatch.setattr(imagefiles, "probe_image", boom)
    assert imagefiles.check_images(paths) == {}
    with open(paths[0], "ab") as f:  # changed file: probed again
        f.write(b"\0")
    with pytest.raises(AssertionError, match="re-probed"):
        imagefiles.check_images(paths)


def test_dataset_in_reads_what_a_folder_holds(tmp_path):
    """evaluate --data_dir takes the dataset from the folder: a prepared emoji folder is emoji, a
    folder of class folders is a folder dataset even for an emoji-trained run; a catalog
    dataset's folder keeps the run's dataset (its loader checks the layout)."""
    import json

    from diva_tf.data.datasets import dataset_in
    from diva_tf.data.emoji import MANIFEST, MANIFEST_FORMAT

    prepared, classes = tmp_path / "emoji", tmp_path / "emoji" / "images"
    (classes / "0001_grinning").mkdir(parents=True)
    (classes / "0002_smiley").mkdir()
    (prepared / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT}))
    assert dataset_in(str(prepared), "folder") == "emoji"
    assert dataset_in(str(classes), "emoji") == "folder"
    assert dataset_in(str(classes), "cub200") == "cub200"
    assert dataset_in(str(tmp_path / "missing"), "emoji") == "emoji"
