"""The data option groups: which images (`DataOptions`: dataset, its folders and split rule) and
how they are batched and transformed (`PipelineOptions`: sampler, batch size, views, cache)."""

from __future__ import annotations

from dataclasses import dataclass

from diva_tf.core.errors import ConfigError
from diva_tf.core.options import (FRACTION, NON_NEGATIVE, POSITIVE, Options, checked, option,
                                  require)
from diva_tf.data.datasets import DATASETS
from diva_tf.data.errors import DataError
from diva_tf.data.sampler import SAMPLERS, Sampler

DEFAULT_EVAL_BATCH = 128  # images per batch when embedding an evaluation split


@dataclass
class DataOptions(Options):
    """The dataset and its class-disjoint splits (algorithm.md 3.1); `load_splits` reads them."""

    dataset: str = option("emoji", "Dataset: " + " | ".join(DATASETS) + " (folder = --data_dir "
                          "with one sub-folder of images per class; see docs/data.md).",
                          choices=(DATASETS, "dataset"))
    data_dir: str = option("", "Dataset folder (official layout), or the prepared emoji folder.")
    tfds_data_dir: str = option("", "tensorflow-datasets data_dir holding caltech_birds2011 / "
                                "cars196 / stanford_online_products (used when set).")
    train_classes: list = option([], "folder dataset: explicit training class names (default: "
                                 "first half of the sorted class folders).")
    test_classes: list = option([], "folder dataset: explicit test class names (default: the "
                                "rest).")
    val_classes_fraction: float = option(0.0, "Fraction of the training classes held out as a "
                                         "validation split (class-disjoint, Reality-Check "
                                         "style); 0 = none.", FRACTION)
    max_images: int = option(0, "Debug: cap the images per split (0 = all).", NON_NEGATIVE)


@dataclass
class PipelineOptions(Options):
    """Class-balanced batches (algorithm.md 3.2) of two augmented views (algorithm.md 3.3), and the evaluation
    view; `train_dataset` and `eval_dataset` build the tf.data pipelines from them."""

    resize: int = option(256, "Test-time resize of the shorter side (algorithm.md 3.3).", POSITIVE)
    crop: int = option(224, "Crop size for training views and test centre crop.", POSITIVE)
    cache_images: bool = option(True, "Cache decoded images in memory when they fit.")
    realistic_augmentation: bool = option(False, "Key-encoder view through the colour pipeline "
                                          "(crop, grayscale p 0.2, colour jitter 0.4, flip; algorithm.md "
                                          "3.3); off in every sample run.")
    realistic_main_augmentation: bool = option(False, "Main view (every loss) through the colour "
                                               "pipeline too (algorithm.md 3.3); off in every sample run.")
    bs: int = option(112, "Global batch size B = classes-per-batch x samples_per_class.", POSITIVE)
    samples_per_class: int = option(2, "Images drawn per class draw.", POSITIVE)
    data_sampler: str = option("class_random", " | ".join(SAMPLERS))

    def validate(self) -> "PipelineOptions":
        checked(self, PipelineOptions)
        try:  # --data_sampler, --bs, --samples_per_class: the sampler checks its own setting
            self.sampler(seed=0)
        except DataError as e:
            raise ConfigError(str(e)) from None
        require(self.resize >= self.crop, f"--resize={self.resize} must be >= --crop={self.crop}")
        return self

    def sampler(self, seed: int, steps_per_epoch: int = 0) -> Sampler:
        """The batch sampler of these options (steps_per_epoch 0: floor(N / B) per epoch)."""
        return Sampler(self.data_sampler, self.bs, self.samples_per_class, seed, steps_per_epoch)
