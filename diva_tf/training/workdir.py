"""Files of a training run's --workdir and the lock that makes its run the only writer (loading a
run's model needs its Config: `diva_tf.runs.run_folder`). Keras is imported only to save
weights."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from diva_tf.core.atomic import atomic_path
from diva_tf.core.errors import ConfigError
from diva_tf.core.locks import exclusive_lock

if TYPE_CHECKING:
    import keras

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"


class WorkdirLock:
    """Context manager: this process is the only writer of `workdir` while inside.

    An exclusive lock on <workdir>/.lock (`core.locks`: dropped by the kernel when its process
    dies, so a crashed run never blocks the next). A second writer gets a ConfigError naming the
    holder at once. On exit the file is removed, and the folder too when this lock created it and
    nothing else was written (a run that failed before writing anything leaves no workdir behind).
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._held = contextlib.ExitStack()
        self._created = False

    def _refuse(self, holder: str) -> ConfigError:
        return ConfigError(f"--workdir={self.workdir} is in use by another training run "
                           f"({holder}); wait for it to end or use another --workdir")

    def __enter__(self) -> "WorkdirLock":
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise ConfigError(f"--workdir={self.workdir} is a file, not a folder")
        self._created = not os.path.exists(self.workdir)
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--workdir={self.workdir}: cannot create the folder ({e.strerror})") from None
        try:
            self._held.enter_context(exclusive_lock(self.path, self._refuse))
        except BaseException as e:
            self._remove_created_folder()
            if isinstance(e, OSError):
                raise ConfigError(f"--workdir={self.workdir}: cannot write its lock file "
                                  f"({e.strerror})") from None
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._held.close()
        self._remove_created_folder()

    def _remove_created_folder(self) -> None:
        if self._created:
            try:
                os.rmdir(self.workdir)
            except OSError:  # not empty: the run wrote something
                pass


def weights_path(workdir: str, which: str) -> str:
    """Keras weights of the embedding model: 'best' (by R@1) or 'last' (latest epoch)."""
    return os.path.join(workdir, f"{which}.weights.h5")


def save_weights_atomic(model: keras.Model, path: str) -> None:
    """Write then rename, so a crash never leaves a half-written weights file under `path`."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)
