"""tf.data pipelines: the infinite training stream of (view1, view2, labels) global batches and
the in-order evaluation stream of (images, labels).

Training element k of epoch e is image `Sampler.epoch_indices(...)[k]`; its two views are drawn
with stateless ops seeded from (seed, e, k). So every batch depends only on (seed, epoch): a run
resumed at epoch e (start_epoch=e) sees exactly the batches it would have seen, whatever the
parallelism.
"""

from __future__ import annotations

import tensorflow as tf

from diva_tf.data.augment import test_view, train_view
from diva_tf.data.options import DEFAULT_EVAL_BATCH
from diva_tf.data.source import image_source

AUTOTUNE = tf.data.AUTOTUNE


def _element_seed(seed: int, epoch, position):
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, position)


def train_dataset(split, pipeline, seed: int = 0, start_epoch: int = 0,
                  steps_per_epoch: int | None = None):
    """DiVA's class-balanced two-view batches of `split` under `PipelineOptions` (sampler, batch
    size, crop, augmentation, cache): an infinite dataset of epochs start_epoch, start_epoch + 1,
    ... each of `steps_per_epoch` batches (default floor(N / bs)), every element (view1 float32
    [bs, crop, crop, 3] in 0..255, view2 alike, labels int32 [bs]). Batches depend only on
    (seed, epoch)."""
    sampler = pipeline.sampler(seed)
    steps = steps_per_epoch or sampler.steps(len(split.labels))
    sampler.check(split.labels)
    n = steps * pipeline.bs
    labels = tf.constant(split.labels, tf.int32)
    source = image_source(split, pipeline.cache_images)

    def epoch_indices(epoch):
        return sampler.epoch_indices(split.labels, int(epoch), steps).reshape(-1)

    def epoch_elements(epoch):
        indices = tf.numpy_function(epoch_indices, [epoch], tf.int32, stateful=False)
        indices = tf.ensure_shape(indices, [n])
        return tf.data.Dataset.from_tensor_slices(
            (indices, tf.fill([n], epoch), tf.range(n, dtype=tf.int64)))

    def element(index, epoch, position):
        image = source.load(index)
        seeds = tf.random.experimental.stateless_split(_element_seed(seed, epoch, position), 2)
        return (train_view(image, seeds[0], pipeline.crop, pipeline.realistic_main_augmentation),
                train_view(image, seeds[1], pipeline.crop, pipeline.realistic_augmentation),
                tf.gather(labels, index))

    ds = tf.data.Dataset.counter(start_epoch, dtype=tf.int64).flat_map(epoch_elements)
    ds = ds.map(element, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(pipeline.bs, drop_remainder=True).prefetch(AUTOTUNE)
    # Every worker builds the same global batches; each keeps its part (no files to shard).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def eval_dataset(split, pipeline, batch_size: int = DEFAULT_EVAL_BATCH):
    """Every image of the split once, in split order, through the evaluation view of
    `PipelineOptions` (resize, centre crop): float32 [b, crop, crop, 3], int32 [b] (the last
    batch may be smaller)."""
    source = image_source(split, pipeline.cache_images)
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(split), dtype=tf.int64), tf.constant(split.labels, tf.int32)))
    ds = ds.map(lambda i, y: (test_view(source.load(i), pipeline.resize, pipeline.crop), y),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)
