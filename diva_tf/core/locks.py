"""One writer at a time: an exclusive `flock` on a lock file that names its holder.

The kernel drops a flock when its process dies (SIGKILL included), so a crashed writer leaves at
most a stale file that the next one takes over; a second writer is refused at once (no waiting)
with the holder's pid, host, start time and command. Used for a training run's folder
(`training.workdir.WorkdirLock`) and for any target rewritten in place (`atomic.single_writer`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from typing import Callable, Iterator


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
        command = str(info["command"]).replace("\n", "\\n")  # the message stays one line
        return f"pid {info['pid']} on {info['host']}, started {info['started']}, command: {command}"
    except (ValueError, KeyError, TypeError):
        return "holder still starting"


def _acquire(path: str, refuse: Callable[[str], BaseException]) -> int:
    """The locked descriptor of the file now at `path` (retried when a releasing holder removed
    the file between our open and our flock)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise refuse(holder) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: str, refuse: Callable[[str], BaseException]) -> Iterator[None]:
    """Hold the lock file `path` for the block; when another process holds it, raise
    `refuse(holder description)`. OSError when the file cannot be created."""
    fd = _acquire(path, refuse)
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  "command": shlex.join(sys.orig_argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while locked: a process waiting on this file retries on a new one
        os.close(fd)
