"""Data: class-disjoint splits of the supported datasets (algorithm.md 3.1), the class-balanced samplers
(algorithm.md 3.2), augmentation (algorithm.md 3.3) and the tf.data pipelines the trainer and evaluator use; their
option groups (`options.py`: `DataOptions`, `PipelineOptions`).

The pipelines are imported on first use, so `python -m diva_tf.data.prepare` and split loading
do not pay for importing TensorFlow.
"""

from diva_tf.data.datasets import DATASETS, load_splits
from diva_tf.data.errors import DataError
from diva_tf.data.folder import split_from_folder
from diva_tf.data.options import DataOptions, PipelineOptions
from diva_tf.data.sampler import SAMPLERS, Sampler
from diva_tf.data.splits import Split, Splits, split_from_arrays

__all__ = ["DATASETS", "SAMPLERS", "DataError", "DataOptions", "PipelineOptions", "Sampler",
           "Split", "Splits", "eval_dataset", "load_splits", "split_from_arrays",
           "split_from_folder", "train_dataset"]


def __getattr__(name):
    if name in ("train_dataset", "eval_dataset"):
        from diva_tf.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
