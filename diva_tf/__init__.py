"""diva_tf: DiVA (Milbich, Roth et al., ECCV 2020) deep metric learning in TensorFlow/Keras 3.

The Python API (docs/python_api.md); every name is imported on first use, so `import diva_tf`
does not load TensorFlow:

- options: `DataOptions`, `PipelineOptions`, `ModelOptions`, `ObjectiveOptions`,
  `OptimizerOptions`, `EvaluationOptions`, `RunOptions` (and `Config`, their union, what the
  command line builds); each has `validate()`.
- data: `load_splits`, `split_from_folder`, `split_from_arrays`; `train_dataset` (DiVA's
  class-balanced two-view batches of a split) and `eval_dataset`.
- model: `build_embedding_model`.
- objectives: `register_loss`, `register_miner` (decorators: a loss or miner by name, for
  `ObjectiveOptions(loss=..., miner=...)` and --loss / --miner).
- training: `DiVATrainer` (a keras.Model: `compile`, `fit` on your batches, `evaluate`),
  `train_model` (a whole run in a run folder, as `python -m diva_tf.train`), `load_model`.
- evaluation: `evaluate_model` (Recall@k, NMI, F1, mAP@C, MAP@R, R-precision on a split),
  `evaluate_run` / `evaluate_export` (a run folder's or an export's model on its dataset, as
  `python -m diva_tf.evaluate`).
- serving: `export_model`, `load_export` (TF Serving SavedModel), `build_index`, `add_images`,
  `remove_items`, `open_index`, `search_images` (faiss retrieval index over an export; one
  `SearchResult` per query file: its `Hit`s or its error).
- errors: `DivaError` (base of `ConfigError`), `DataError`.
"""

import importlib

from diva_tf.core.version import __version__

_API = {
    "Config": "diva_tf.config",
    "DataOptions": "diva_tf.data.options",
    "PipelineOptions": "diva_tf.data.options",
    "ModelOptions": "diva_tf.model.options",
    "ObjectiveOptions": "diva_tf.objectives.options",
    "OptimizerOptions": "diva_tf.training.options",
    "EvaluationOptions": "diva_tf.evaluation.options",
    "RunOptions": "diva_tf.training.options",
    "Split": "diva_tf.data.splits",
    "Splits": "diva_tf.data.splits",
    "load_splits": "diva_tf.data.datasets",
    "split_from_folder": "diva_tf.data.folder",
    "split_from_arrays": "diva_tf.data.splits",
    "train_dataset": "diva_tf.data.pipeline",
    "eval_dataset": "diva_tf.data.pipeline",
    "build_embedding_model": "diva_tf.model.network",
    "DiVATrainer": "diva_tf.training.trainer",
    "register_loss": "diva_tf.objectives.registry",
    "register_miner": "diva_tf.objectives.registry",
    "train_model": "diva_tf.runs.run_folder",
    "load_model": "diva_tf.runs.run_folder",
    "evaluate_model": "diva_tf.evaluation.model_eval",
    "evaluate_run": "diva_tf.runs.evaluate",
    "evaluate_export": "diva_tf.runs.evaluate",
    "export_model": "diva_tf.serving.export",
    "load_export": "diva_tf.serving.export",
    "build_index": "diva_tf.serving.index",
    "add_images": "diva_tf.serving.index",
    "remove_items": "diva_tf.serving.index",
    "open_index": "diva_tf.serving.index",
    "search_images": "diva_tf.serving.index",
    "SearchResult": "diva_tf.serving.index",
    "Hit": "diva_tf.serving.index",
    "DivaError": "diva_tf.core.errors",
    "ConfigError": "diva_tf.core.errors",
    "DataError": "diva_tf.data.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
