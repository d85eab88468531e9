"""training/checkpoints.py: which checkpoints a run folder lists, and which restores count as
complete."""

from __future__ import annotations

import keras
import pytest
import tensorflow as tf

from diva_tf.training.checkpoints import _check_matched, listed, number


class _State(keras.Model):
    def __init__(self, queue_filled=False, extra=False):
        super().__init__()
        self.a = self.add_weight(name="a", shape=(2,), initializer="ones")
        if queue_filled:
            self.queue_filled = self.add_weight(name="queue_filled", shape=(), dtype="bool",
                                                initializer="zeros", trainable=False)
        if extra:
            self.b = self.add_weight(name="b", shape=(2,), initializer="zeros")


def test_an_older_checkpoint_without_newer_state_restores_but_missing_weights_do_not(tmp_path):
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(trainer=_State()), str(tmp_path), 3)
    path = manager.save(checkpoint_number=4)
    _check_matched(tf.train.Checkpoint(trainer=_State(queue_filled=True)).restore(path))
    with pytest.raises(AssertionError):
        _check_matched(tf.train.Checkpoint(trainer=_State(extra=True)).restore(path))


def test_listed_reads_the_state_file_or_the_files_when_it_is_garbage(tmp_path):
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(trainer=_State()), str(tmp_path), 3)
    for n in (1, 2, 10):
        manager.save(checkpoint_number=n)
    assert [number(p) for p in listed(str(tmp_path))] == [10, 2, 1]
    (tmp_path / "checkpoint").write_bytes(b"\xff\x00 not a state file {")
    assert [number(p) for p in listed(str(tmp_path))] == [10, 2, 1]
    assert listed(str(tmp_path / "missing")) == []
