"""Files of a training run's --workdir and the lock that makes its run the only writer (loading a
run's model needs its Config: `diva_tf.runs.run_folder`). Keras is imported only to save
weights."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from typing import TYPE_CHECKING

from diva_tf.core.atomic import atomic_path
from diva_tf.core.errors import ConfigError

if TYPE_CHECKING:
    import keras

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"


class WorkdirLock:
    """Context manager: this process is the only writer of `workdir` while inside.

    An exclusive flock on <workdir>/.lock, which holds the holder's pid, host, start time and
    command. The kernel drops a flock when its process dies (also on SIGKILL), so a crashed run
    leaves at most a stale file that the next run takes over. A second writer gets a ConfigError
    naming the holder at once (no waiting). On exit the file is removed, and the folder too when
    this lock created it and nothing else was written (a run that failed before writing anything
    leaves no workdir behind).
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> "WorkdirLock":
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise ConfigError(f"--workdir={self.workdir} is a file, not a folder")
        self._created = not os.path.exists(self.workdir)
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--workdir={self.workdir}: cannot create the folder ({e.strerror})") from None
        try:
            self._fd = self._acquire()
        except BaseException:
            self._remove_created_folder()
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  "command": shlex.join(sys.orig_argv)}
        os.ftruncate(self._fd, 0)
        os.write(self._fd, (json.dumps(holder) + "\n").encode())
        return self

    def _acquire(self) -> int:
        """The locked descriptor of the file now at self.path (retried if a releasing holder
        removed the file between our open and our flock)."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ConfigError(f"--workdir={self.workdir}: cannot write its lock file "
                                  f"({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._describe_holder(fd)
                os.close(fd)
                raise ConfigError(f"--workdir={self.workdir} is in use by another training run "
                                  f"({holder}); wait for it to end or use another --workdir") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    @staticmethod
    def _describe_holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
            command = str(info["command"]).replace("\n", "\\n")  # the message stays one line
            return f"pid {info['pid']} on {info['host']}, started {info['started']}, command: {command}"
        except (ValueError, KeyError, TypeError):
            return "holder still starting"

    def __exit__(self, *exc) -> None:
        try:
            os.unlink(self.path)  # while still locked: an opener of this file retries on a new one
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
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
