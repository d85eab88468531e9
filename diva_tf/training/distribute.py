"""Choosing the tf.distribute strategy (the --strategy registry) and the chief's role in a
multi-worker run. TensorFlow is imported only when a strategy is built."""

from __future__ import annotations

import json
import os


def tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None


def num_workers() -> int:
    cluster = tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def is_chief() -> bool:
    """Worker 0 (or the 'chief' task) writes checkpoints and logs; others write to scratch."""
    task = tf_config().get("task", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    has_chief = bool(tf_config().get("cluster", {}).get("chief"))
    return task.get("type") == "worker" and task.get("index", 0) == 0 and not has_chief


def _multiworker():
    import tensorflow as tf
    return tf.distribute.MultiWorkerMirroredStrategy()


def _mirrored():
    import tensorflow as tf
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[d.name for d in gpus] or [d.name for d in cpus])


def _default():
    import tensorflow as tf
    return tf.distribute.get_strategy()


def _auto():
    """MultiWorkerMirrored when TF_CONFIG names several workers, else Mirrored over local devices."""
    return _multiworker() if num_workers() > 1 else _mirrored()


STRATEGIES = {"auto": _auto, "mirrored": _mirrored, "multiworker": _multiworker, "default": _default}


def make_strategy(name: str) -> "tf.distribute.Strategy":
    """The strategy of --strategy (a STRATEGIES name)."""
    return STRATEGIES[name]()
