"""A training run's folder through its config.json: training in it (a new run, or the resumption
of the one it holds), loading the model it trained, and exporting that model.

`train` is what `python -m diva_tf.train` runs, and `train_model` (the Python API, from option
groups) too: the chief locks the folder before
TensorFlow is imported or any data is read (a second run on the same folder is refused at once;
other workers write to scratch folders and do not lock), refuses a folder holding a run with other
settings, loads the splits, records the Config once they loaded, and trains with
`diva_tf.training.run.TrainingRun`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from diva_tf.config.config import Config
from diva_tf.core.errors import ConfigError, describe
from diva_tf.data.options import DataOptions, PipelineOptions
from diva_tf.data.splits import Splits
from diva_tf.evaluation.options import EvaluationOptions
from diva_tf.model.options import ModelOptions
from diva_tf.objectives.options import ObjectiveOptions
from diva_tf.training import workdir as wd
from diva_tf.training.distribute import is_chief
from diva_tf.training.options import OptimizerOptions, RunOptions

# Fields that may change between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = {"n_epochs", "eval_every", "keep_checkpoints", "eval_batch_size", "strategy",
                     "jit_compile", "data_dir", "tfds_data_dir", "workdir", "eval_combinations",
                     "recall_k", "cache_images", "eval_test"}


def check_resume_compatible(saved: Config, cfg: Config) -> None:
    diff = {k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items()
            if k not in RESUMABLE_CHANGES and getattr(cfg, k) != v}
    if diff:
        lines = ", ".join(f"--{k}: run has {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(f"{cfg.workdir} holds a run with other settings ({lines}); "
                          "use a new --workdir or the same flags to resume")


def check_workdir(cfg: Config) -> None:
    """Refuse to resume a run trained with other settings (no side effects)."""
    cfg_path = os.path.join(cfg.workdir, wd.CONFIG_FILE)
    if os.path.exists(cfg_path):
        check_resume_compatible(Config.load(cfg_path), cfg)


def train(cfg: Config, splits=None) -> dict:
    """Train according to a validated cfg in cfg.workdir (resuming the run it holds); returns the
    final record (best selection metric and epoch). `splits` replaces the dataset of cfg (e.g.
    in-memory arrays); config.json then describes the run but not its data."""
    chief = is_chief()
    with wd.WorkdirLock(cfg.workdir) if chief else contextlib.nullcontext():
        check_workdir(cfg)
        return _train(cfg, splits, chief)


def _train(cfg: Config, splits, chief: bool) -> dict:
    """`train` once the workdir is this process's."""
    from diva_tf import data
    from diva_tf.training.run import TrainingRun

    splits = data.load_splits(cfg) if splits is None else splits
    run = TrainingRun(splits, model=cfg, pipeline=cfg, objective=cfg, optimizer=cfg,
                      evaluation=cfg, run=cfg, dataset=cfg.dataset, chief=chief)
    if chief:  # the lock made the folder
        cfg.save(os.path.join(cfg.workdir, wd.CONFIG_FILE))
    return run.fit()


def train_model(data, *, pipeline: PipelineOptions | None = None,
                model: ModelOptions | None = None, objective: ObjectiveOptions | None = None,
                optimizer: OptimizerOptions | None = None,
                evaluation: EvaluationOptions | None = None, run: RunOptions | None = None) -> dict:
    """Train DiVA on `data` in the run folder `run.workdir`, as `python -m diva_tf.train` does
    (checkpoints, metrics.jsonl, best and last weights; the same call again resumes the run).

    data: a folder with one sub-folder of images per class (split in half by the folder rule),
    `DataOptions` (any supported dataset), or `Splits` (e.g. of `split_from_arrays`; the run's
    config.json then does not describe the data). The other arguments are the option groups; a
    missing one has its defaults. Returns the best selection metric, its epoch and the run folder;
    `load_model(run.workdir)` gives the trained model.
    """
    splits = data if isinstance(data, Splits) else None
    if isinstance(data, (str, os.PathLike)):
        data = DataOptions(dataset="folder", data_dir=os.fspath(data))
    elif splits is not None:
        data = DataOptions(dataset="folder")
    given = {DataOptions: data, PipelineOptions: pipeline, ModelOptions: model,
             ObjectiveOptions: objective, OptimizerOptions: optimizer,
             EvaluationOptions: evaluation, RunOptions: run}
    fields = {}
    for group, options in given.items():
        options = group() if options is None else options
        fields.update({f.name: getattr(options, f.name) for f in dataclasses.fields(group)})
    return train(Config(**fields).validate(), splits)


def load_config(workdir: str) -> Config:
    return Config.load(os.path.join(workdir, wd.CONFIG_FILE))


def load_model(workdir: str, checkpoint: str = "best") -> tuple["keras.Model", Config]:
    """(embedding model with the run's weights, its Config). Falls back from best to last."""
    from diva_tf.model.network import build_embedding_model

    cfg = load_config(workdir)
    path = wd.weights_path(workdir, checkpoint)
    if not os.path.exists(path) and checkpoint == "best":
        path = wd.weights_path(workdir, "last")
    if not os.path.exists(path):
        raise ConfigError(f"{workdir} has no trained weights ({checkpoint}.weights.h5); "
                          "has the run finished an epoch?")
    model = build_embedding_model(cfg, cfg.seed, weights="none")
    try:
        model.load_weights(path)
    except Exception as e:  # noqa: BLE001 - h5py and Keras report a damaged file in many types
        raise ConfigError(f"{path} cannot be read ({describe(e)}); the run's "
                          "other weights file or its checkpoints may be intact") from None
    return model, cfg


def export_workdir(workdir: str, export_dir: str, version: int | None = None,
                   checkpoint: str = "best", head_weights=None, overwrite: bool = False) -> str:
    """Load a training run's weights and export them (`diva_tf.serving.export.export_model`, with
    the run's metrics and portable source in the manifest); returns the version folder."""
    from diva_tf.serving.export import export_model, run_metrics, run_source

    model, cfg = load_model(workdir, checkpoint)
    weights = tuple(cfg.head_weights if head_weights is None else head_weights)
    return export_model(model, cfg, export_dir, version, weights, overwrite,
                        run_metrics(workdir, cfg.diva_features, weights, checkpoint),
                        run_source(workdir, cfg.to_dict(), checkpoint),
                        heads=cfg.diva_features, dataset=cfg.dataset, backbone=cfg.backbone)
