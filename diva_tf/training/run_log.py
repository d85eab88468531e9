"""Per-epoch records of a run: JSON lines (one per epoch, rewritten on resume so no epoch appears
twice) and TensorBoard scalars."""

from __future__ import annotations

import json
import math
import os

import tensorflow as tf

from diva_tf.core.atomic import atomic_file


def _plain(value):
    if isinstance(value, (int, str)) or value is None:
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else str(f)


class RunLog:
    """metrics.jsonl + TensorBoard writer under the workdir."""

    def __init__(self, jsonl_path: str, tensorboard_dir: str | None):
        self.path = jsonl_path
        self.writer = tf.summary.create_file_writer(tensorboard_dir) if tensorboard_dir else None

    def records(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs > `epoch` (written by a run killed before its checkpoint)."""
        kept = [r for r in self.records() if r.get("epoch", 0) <= epoch]
        with atomic_file(self.path) as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")

    def write(self, record: dict) -> None:
        record = {k: _plain(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.writer is not None:
            step = int(record.get("epoch", 0))
            with self.writer.as_default():
                for k, v in record.items():
                    if k != "epoch" and isinstance(v, float):
                        tf.summary.scalar(k, v, step=step)
            self.writer.flush()
