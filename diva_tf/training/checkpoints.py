"""Resuming a run from its checkpoint folder: the newest checkpoint that restores, the same one on
every worker of a multi-worker run.

A checkpoint that cannot be read (a flipped byte, a truncated file, a file gone) is skipped for
the one before it; the chief then moves its files into `damaged/` beside the others and says so
in one warning line: never deleted, never silently replaced by the epoch trained again. When no
listed checkpoint restores, the run is refused (starting over would overwrite it)."""

from __future__ import annotations

import glob
import os
import re
import shutil

import tensorflow as tf
from absl import logging

from diva_tf.core.errors import ConfigError, describe
from diva_tf.training.distribute import replica_values

DAMAGED_DIR = "damaged"
_NUMBER = re.compile(r"-(\d+)$")
# State added after checkpoints were first written: absent from an older run's checkpoints, it
# keeps its initial value (the caller derives it from what was restored).
NEWER_STATE = ("queue_filled", "save_counter")
_UNMATCHED = re.compile(r"path=([^,\s]+)|'([^':]+)(?::\d+)?'")


def number(path: str) -> int:
    """12 for '.../ckpt-12'."""
    return int(_NUMBER.search(path).group(1))


def listed(directory: str) -> list[str]:
    """The folder's checkpoints, newest first: those its state file lists (complete ones: the
    manager names a checkpoint only once written), or every `<prefix>-N.index` when the state file
    itself cannot be read."""
    try:
        state = tf.train.get_checkpoint_state(directory)
        paths = list(state.all_model_checkpoint_paths) if state else []
    except (tf.errors.OpError, ValueError, UnicodeDecodeError):
        logging.warning("%s/checkpoint cannot be read; looking for checkpoint files instead",
                        directory)
        paths = [p[: -len(".index")] for p in glob.glob(os.path.join(directory, "*-*.index"))]
    paths = [p if os.path.isabs(p) else os.path.join(directory, p) for p in paths]
    return sorted({p for p in paths if _NUMBER.search(p)}, key=number, reverse=True)


def restore_newest(ckpt: tf.train.Checkpoint, directory: str) -> tuple[str | None, list]:
    """Restore the newest readable checkpoint of `directory` into `ckpt`; returns its path (None
    when the folder has none) and [(path, reason)] of the newer ones that could not be read."""
    damaged = []
    for path in listed(directory):
        try:
            _check_matched(ckpt.restore(path))
            return path, damaged
        except Exception as e:  # noqa: BLE001 - TF reports a damaged file in many types
            damaged.append((path, describe(e)))
    if damaged:
        raise ConfigError(f"no checkpoint in {directory} can be read ("
                          + "; ".join(f"{os.path.basename(p)}: {r}" for p, r in damaged)
                          + "); move the run folder away to start over")
    return None, damaged


def _check_matched(status) -> None:
    """Every object of the run was restored, except state newer than the checkpoint
    (`NEWER_STATE`)."""
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        listed_part = str(e).split(":", 1)[-1]
        names = [a or b for a, b in _UNMATCHED.findall(listed_part)]
        if not names or any(n.rsplit("/", 1)[-1] not in NEWER_STATE for n in names):
            raise


def set_aside(damaged: list, restored: str | None) -> None:
    """Move the files of each damaged checkpoint into `damaged/` beside them, one warning line
    each."""
    for path, reason in damaged:
        target = os.path.join(os.path.dirname(path), DAMAGED_DIR)
        os.makedirs(target, exist_ok=True)
        for f in glob.glob(glob.escape(path) + ".*"):
            shutil.move(f, os.path.join(target, os.path.basename(f)))
        logging.warning("%s cannot be read (%s): moved to %s/, resuming from %s",
                        os.path.basename(path), reason, target,
                        os.path.basename(restored) if restored else "the start")


def check_same_everywhere(strategy, restored: str | None, directory: str) -> None:
    """Refuse (on every worker, in one line) a resume where the workers restored different
    checkpoints: a worker that cannot see the chief's run folder would train a mixed epoch."""
    mine = number(restored) if restored else 0
    seen = replica_values(strategy, lambda: tf.constant([mine], tf.int64)).reshape(-1)
    if len(set(seen.tolist())) > 1:
        found = ", ".join(f"replica {i}: {f'ckpt-{n}' if n else 'none'}" for i, n in enumerate(seen))
        raise ConfigError(f"the workers see different checkpoints in {directory} ({found}): every "
                          "worker must see the chief's run folder (put --workdir on storage they "
                          "all share), then rerun the same command on every worker")
