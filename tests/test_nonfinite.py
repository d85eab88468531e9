"""A loss that becomes NaN or inf stops training with one line and exit 2, and nothing of the diverged
epoch is saved: the checkpoint, weights and metrics of the last good epoch survive byte for byte, and
the next command resumes from them."""

from __future__ import annotations

import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from diva_tf import train
from diva_tf.training.callbacks import NonFiniteLoss, StopOnNonFinite
from diva_tf.objectives.objective import DiVAObjective
from diva_tf.runs.run_folder import load_config
from test_train_cli import _flags, _records, folder_data, run_train  # noqa: F401 (fixture)


def _files(workdir):
    """Every file the run writes as it trains (not TensorBoard's: a new run opens a new, empty
    event file; not config.json: each command saves its own --n_epochs)."""
    out = {}
    for root, _, names in os.walk(workdir):
        for n in names:
            path = os.path.join(root, n)
            rel = os.path.relpath(path, workdir)
            if not rel.startswith("tensorboard") and rel != "config.json":
                with open(path, "rb") as f:
                    out[rel] = f.read()
    return out


def _poison_selfsimilarity_from(step):
    """DiVAObjective.call whose DaNCE term is multiplied by NaN from global step `step` on (the
    step is the second element of the seed the trainer passes); the NaN also reaches the gradients,
    so the weights would become NaN too."""
    original = DiVAObjective.call

    def call(self, embeddings, labels, seed, keys=None, queue=None):
        _, terms = original(self, embeddings, labels, seed, keys, queue)
        factor = tf.where(tf.cast(seed, tf.int64)[1] >= step, tf.constant(np.nan, tf.float32), 1.0)
        terms = {**terms, "selfsimilarity": terms["selfsimilarity"] * factor}
        return tf.add_n(list(terms.values())), terms
    return call


def test_nan_at_a_step_stops_the_run_and_keeps_the_last_good_epoch(folder_data, tmp_path,
                                                                    monkeypatch, capsys):
    workdir = str(tmp_path / "run")
    assert run_train(_flags(folder_data, workdir, n_epochs=1)).returncode == 0  # a good epoch 1
    cfg = load_config(workdir)
    good = _files(workdir)
    assert [r["epoch"] for r in _records(workdir)] == [0, 1]
    assert {"checkpoints/checkpoint", "last.weights.h5", "best.weights.h5"} <= set(good)

    # Steps 0-2 are epoch 1 (3 steps per epoch); global step 4 is epoch 2, step 2.
    with monkeypatch.context() as m:
        m.setattr(DiVAObjective, "call", _poison_selfsimilarity_from(4))
        m.setattr(train, "config_from_flags", lambda: cfg.replace(n_epochs=3))
        capsys.readouterr()
        assert train.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: non-finite loss selfsimilarity=nan, loss=nan at epoch 2, step 2: training "
                   "stopped; nothing of epoch 2 was saved, the workdir keeps the run as of epoch 1 "
                   "(rerunning resumes there)\n")
    assert _files(workdir) == good

    # The next command resumes from epoch 1 and its epoch 1 is untouched.
    train.run(cfg.replace(n_epochs=2))
    records = _records(workdir)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert np.isfinite(records[2]["train/selfsimilarity"])
    assert (records[1]["train/loss"], records[1]["seconds"]) == (
        _records_from_bytes(good["metrics.jsonl"])[1]["train/loss"],
        _records_from_bytes(good["metrics.jsonl"])[1]["seconds"])


def _records_from_bytes(data):
    return [json.loads(line) for line in data.decode().splitlines()]


def test_a_diverging_learning_rate_ends_with_one_line_and_exit_2(folder_data, tmp_path):
    """--lr=1e30 on the tiny backbone: the first update blows the weights up, the second step's
    loss terms are NaN; the untrained evaluation (epoch 0) is all the workdir holds."""
    workdir = str(tmp_path / "diverged")
    r = run_train(_flags(folder_data, workdir, lr=1e30))
    assert r.returncode == 2
    last = r.stderr.splitlines()[-1]
    assert re.fullmatch(r"error: non-finite loss (\w+=nan, )+loss=nan( \(and \d+ diagnostic statistics\))? "
                        r"at epoch 1, step 2: training stopped; nothing of epoch 1 was saved, the "
                        r"workdir keeps the run as of epoch 0 \(rerunning resumes there\)", last), last
    assert "Traceback" not in r.stderr
    assert [rec["epoch"] for rec in _records(workdir)] == [0]
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    assert not os.path.exists(os.path.join(workdir, "last.weights.h5"))


def test_step_logs_name_the_loss_terms_first_and_count_the_statistics():
    cb = StopOnNonFinite()
    cb.on_epoch_begin(4)
    cb.on_train_batch_end(6, {"loss": np.float32(1.0), "intra": np.float32(0.3)})  # finite: no stop
    logs = {"loss": np.float32(np.nan), "discriminative": np.float32(0.5),
            "selfsimilarity": np.float32(np.inf), "dance_positive_logit": np.float32(np.nan),
            "correlation_shared_discriminative": np.float32(np.nan)}
    with pytest.raises(NonFiniteLoss, match=r"^non-finite loss selfsimilarity=inf, loss=nan \(and 2 "
                                            r"diagnostic statistics\) at epoch 5, step 7: training "
                                            r"stopped; nothing of epoch 5 was saved, the workdir "
                                            r"keeps the run as of epoch 4 "):
        cb.on_train_batch_end(6, logs)


def test_non_finite_weights_at_an_epoch_end_stop_before_it_is_saved():
    """An update on an epoch's last step can make the weights NaN while that step's loss was
    finite: the epoch-end check catches it (listed before EpochEnd, nothing is saved)."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="head")], name="net")
    cb = StopOnNonFinite()
    cb.set_model(model)
    cb.on_epoch_begin(0)
    cb.on_epoch_end(0)  # finite: no stop
    kernel = model.get_layer("head").kernel
    kernel.assign(np.where(np.arange(6).reshape(2, 3) == 4, np.nan, kernel.numpy()))
    with pytest.raises(NonFiniteLoss, match=r"^non-finite weights \(1 variables, e.g. net/head/kernel\) "
                                            r"at epoch 1, after its last step: "):
        cb.on_epoch_end(0)
