"""Files of a training run's --workdir, and loading a trained embedding model from one."""

from __future__ import annotations

import os

import keras

from diva_tf.config import Config, ConfigError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def weights_path(workdir: str, which: str) -> str:
    """Keras weights of the embedding model: 'best' (by R@1) or 'last' (latest epoch)."""
    return os.path.join(workdir, f"{which}.weights.h5")


def load_config(workdir: str) -> Config:
    return Config.load(os.path.join(workdir, CONFIG_FILE))


def load_model(workdir: str, checkpoint: str = "best") -> tuple[keras.Model, Config]:
    """(embedding model with the run's weights, its Config). Falls back from best to last."""
    from diva_tf.model import build_embedding_model

    cfg = load_config(workdir)
    path = weights_path(workdir, checkpoint)
    if not os.path.exists(path) and checkpoint == "best":
        path = weights_path(workdir, "last")
    if not os.path.exists(path):
        raise ConfigError(f"{workdir} has no trained weights ({checkpoint}.weights.h5); "
                          "has the run finished an epoch?")
    model = build_embedding_model(cfg, weights="none")
    model.load_weights(path)
    return model, cfg


def save_weights_atomic(model: keras.Model, path: str) -> None:
    """Write then rename, so a crash never leaves a half-written weights file under `path`."""
    tmp = path[: -len(".weights.h5")] + ".tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, path)
