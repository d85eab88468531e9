"""The tf.data pipelines: batch structure, agreement with the sampler, determinism and exact
resumption, independence from the caching mode, the evaluation order, early errors."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from diva_tf.config import Config
from diva_tf.data import DataError, Split, eval_dataset, load_splits, source, train_dataset
from diva_tf.data.augment import test_view as reference_test_view
from fixtures_data import isolated_cache, make_class_tree, write_image  # noqa: F401

BS = 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipeline_data"))
    make_class_tree(root, {f"c{i}": 4 + i % 3 for i in range(8)})
    write_image(os.path.join(root, "c1", "gray.png"), 1, mode="L")
    write_image(os.path.join(root, "c2", "rgba.png"), 2, size=(30, 18), mode="RGBA")
    write_image(os.path.join(root, "c3", "single_px_wide.png"), 3, size=(1, 12))
    return root


def make_cfg(data_dir, **kw):
    base = dict(dataset="folder", data_dir=data_dir, bs=BS, samples_per_class=2, crop=16,
                resize=20, seed=1)
    return Config(**{**base, **kw})


@pytest.fixture(scope="module")
def train_split(data_dir):
    return load_splits(make_cfg(data_dir)).train


def fresh(split):
    return Split(images=list(split.images), labels=split.labels, class_names=split.class_names)


def take(ds, n):
    return [tuple(t.numpy() for t in batch) for batch in itertools.islice(ds, n)]


def test_batches_follow_the_sampler_with_fixed_shapes(data_dir, train_split):
    cfg = make_cfg(data_dir)
    sampler = cfg.sampler(cfg.seed, cfg.steps_per_epoch)
    spe = sampler.steps(len(train_split.labels))
    assert spe == len(train_split) // BS == 2
    batches = take(train_dataset(train_split, cfg, cfg.seed), 2 * spe)
    expected = np.concatenate([sampler.epoch_indices(train_split.labels, e) for e in (0, 1)])
    for (v1, v2, labels), idx in zip(batches, expected):
        assert v1.shape == v2.shape == (BS, 16, 16, 3)
        assert v1.dtype == v2.dtype == np.float32 and labels.dtype == np.int32
        assert 0 <= v1.min() and v1.max() <= 255
        np.testing.assert_array_equal(labels, train_split.labels[idx])
        assert not np.array_equal(v1, v2), "two independent views"


def test_resumed_run_sees_the_same_batches(data_dir, train_split):
    cfg = make_cfg(data_dir)
    full = take(train_dataset(train_split, cfg, cfg.seed, steps_per_epoch=3), 9)
    resumed = take(train_dataset(train_split, cfg, cfg.seed, start_epoch=2, steps_per_epoch=3), 3)
    for a, b in zip(full[6:], resumed):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    again = take(train_dataset(train_split, cfg, cfg.seed, steps_per_epoch=3), 3)
    np.testing.assert_array_equal(again[0][0], full[0][0])
    assert not np.array_equal(full[0][0], full[3][0]), "epochs differ"
    other_seed = take(train_dataset(train_split, cfg, seed=2, steps_per_epoch=3), 1)
    assert not np.array_equal(other_seed[0][0], full[0][0])


@pytest.mark.parametrize("flag,changed_view", [("realistic_augmentation", 1),
                                                ("realistic_main_augmentation", 0)])
def test_realistic_flags_recolour_only_their_view(data_dir, train_split, flag, changed_view):
    weak = take(train_dataset(train_split, make_cfg(data_dir), 1), 1)[0]
    recoloured = take(train_dataset(train_split, make_cfg(data_dir, **{flag: True}), 1), 1)[0]
    np.testing.assert_array_equal(recoloured[1 - changed_view], weak[1 - changed_view])
    np.testing.assert_array_equal(recoloured[2], weak[2])
    assert not np.allclose(recoloured[changed_view], weak[changed_view])


def test_pixels_do_not_depend_on_the_cache_mode(data_dir, train_split, monkeypatch):
    cfg = make_cfg(data_dir)
    results = {}
    for mode in ("decoded", "encoded", "files"):
        monkeypatch.setattr(source, "choose_mode", lambda *a, m=mode: m)
        split = fresh(train_split)
        results[mode] = take(train_dataset(split, cfg, cfg.seed), 1)[0]
        assert source.image_source(split, cfg.cache_images).mode == mode
    for mode in ("encoded", "files"):
        for x, y in zip(results["decoded"], results[mode]):
            np.testing.assert_array_equal(x, y)


def test_choose_mode_by_budget(train_split):
    images = train_split.images
    assert source.choose_mode(images, False, 10**12) == "files"
    assert source.choose_mode(images, True, 10**12) == "decoded"
    assert source.choose_mode(images, True, source.encoded_bytes(images)) == "encoded"
    assert source.choose_mode(images, True, 10) == "files"
    blobs = [b"x" * 10, b"y" * 10]
    assert source.choose_mode(blobs, False, 10**12) == "encoded"


def test_eval_dataset_every_image_once_in_order(data_dir):
    cfg = make_cfg(data_dir)
    test = load_splits(cfg).test
    batches = take(eval_dataset(test, cfg, batch_size=5), 100)
    sizes = [5] * (len(test) // 5) + [len(test) % 5] * bool(len(test) % 5)
    assert [len(b[1]) for b in batches] == sizes
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), test.labels)
    images = np.concatenate([b[0] for b in batches])
    assert images.shape == (len(test), 16, 16, 3) and images.dtype == np.float32
    for i in (0, len(test) - 1):
        decoded = tf.io.decode_image(tf.io.read_file(test.images[i]), channels=3,
                                     expand_animations=False)
        np.testing.assert_array_equal(images[i], reference_test_view(decoded, 20, 16).numpy())


def test_grayscale_rgba_and_thin_images_decode_to_rgb_crops(data_dir, train_split):
    cfg = make_cfg(data_dir)
    ds = eval_dataset(train_split, cfg, batch_size=64)
    images, _ = next(iter(ds))
    names = [os.path.basename(p) for p in train_split.images]
    gray = images[names.index("gray.png")].numpy()
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    assert images[names.index("rgba.png")].shape == (16, 16, 3)


def test_sampler_errors_surface_before_tf_data(data_dir, train_split):
    with pytest.raises(DataError, match="class_without_replacement needs 8 distinct classes"):
        train_dataset(train_split, make_cfg(data_dir, bs=16,
                                            data_sampler="class_without_replacement"))
    with pytest.raises(DataError, match="fewer than one batch"):
        train_dataset(train_split, make_cfg(data_dir, bs=64))


def test_global_batches_split_across_two_replicas(data_dir, train_split):
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs the two logical CPU devices of tests/conftest.py")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    cfg = make_cfg(data_dir)
    dist = strategy.experimental_distribute_dataset(train_dataset(train_split, cfg, cfg.seed))
    v1, _, labels = next(iter(dist))
    parts = strategy.experimental_local_results(labels)
    assert [p.shape[0] for p in parts] == [BS // 2, BS // 2]
    single = take(train_dataset(train_split, cfg, cfg.seed), 1)[0]
    np.testing.assert_array_equal(np.concatenate([p.numpy() for p in parts]), single[2])
