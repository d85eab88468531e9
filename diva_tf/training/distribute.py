"""Choosing the tf.distribute strategy (the --strategy registry), the workers of a multi-worker
run (who is the chief, where the others keep their scratch files), and what every worker must
agree on: the checkpoint it resumes from and the weights it holds. TensorFlow is imported only
when a strategy is used."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile

from diva_tf.core.errors import DivaError


class WorkerLost(DivaError):
    """A peer of a multi-worker run stopped answering (crashed, killed, preempted)."""


def tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None


def num_workers() -> int:
    cluster = tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def task_name() -> str:
    """This process's task as TensorFlow names it ('/job:worker/task:1'); '' outside a cluster."""
    task = tf_config().get("task", {})
    return f"/job:{task['type']}/task:{task.get('index', 0)}" if task.get("type") else ""


def is_chief() -> bool:
    """Worker 0 (or the 'chief' task) writes the run folder; the others write to scratch."""
    task = tf_config().get("task", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    has_chief = bool(tf_config().get("cluster", {}).get("chief"))
    return task.get("type") == "worker" and task.get("index", 0) == 0 and not has_chief


def scratch_dir(workdir: str) -> str:
    """Where a non-chief worker writes what every worker must write (checkpoints, weights: saving
    takes part in collective ops) and nobody reads: outside the run folder, one fixed folder per
    (run folder, task), emptied when the worker starts and removed when it ends, so killed workers
    never leave a pile of them."""
    key = hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:12]
    task = tf_config().get("task", {})
    name = f"{task['type']}-{task.get('index', 0)}" if task.get("type") else str(os.getpid())
    return os.path.join(tempfile.gettempdir(), "diva_tf_scratch", f"{key}-{name}")


_TASK = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")


def lost_peers(message: str) -> list[str]:
    """The tasks other than this one that a TensorFlow collective error names (the peer that
    stopped sending heartbeats, or the remote end of a closed socket)."""
    me = task_name()
    seen = []
    for job, index in _TASK.findall(message):
        name = f"/job:{job}/task:{index}"
        if name != me and name not in seen:
            seen.append(name)
    return seen


def worker_lost(error: Exception, epoch: int, saved_epoch: int) -> WorkerLost:
    """The one-line error of a multi-worker run whose peer went away during `epoch`."""
    peers = lost_peers(str(error))
    who = ", ".join(peers) if peers else "another worker"
    return WorkerLost(f"lost {who} during epoch {epoch} ({type(error).__name__}): training "
                      f"stopped, the run folder keeps epoch {saved_epoch}; rerun the same command "
                      "on every worker to resume from there")


def replica_values(strategy, fn) -> "np.ndarray":
    """fn() run on every replica of `strategy` (reading each replica's own copy of mirrored
    variables), stacked: [replicas, ...] on every worker."""
    import tensorflow as tf

    per_replica = strategy.run(tf.function(lambda: fn()[None]))
    if strategy.num_replicas_in_sync == 1:
        return strategy.experimental_local_results(per_replica)[0].numpy()
    return strategy.gather(per_replica, axis=0).numpy()


def replica_disagreement(strategy, variables) -> float:
    """Largest difference, over `variables` and replicas, between a replica's copy of a variable
    and the first replica's (float64 sum and sum of squares of each copy): 0 when every replica
    (on every worker) holds the same weights."""
    import numpy as np
    import tensorflow as tf

    def checksums():
        values = [tf.cast(v, tf.float64) for v in variables]
        return tf.stack([tf.reduce_sum(x) for x in values] + [tf.reduce_sum(x * x) for x in values])

    sums = replica_values(strategy, checksums)
    return float(np.max(np.abs(sums - sums[:1]))) if sums.size else 0.0


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
