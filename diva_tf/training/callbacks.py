"""Keras callbacks of a training run: end-of-epoch evaluation, best-model tracking, checkpoints
and logs (in that order, so a crash at any point resumes without a lost or repeated epoch), a stop
at the first non-finite loss (before anything of that epoch is saved), and a progress line with the
loss terms and images/s."""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from diva_tf.objectives import diagnostics
from diva_tf.training import workdir as wd
from diva_tf.training.run_log import RunLog


class EpochEnd(keras.callbacks.Callback):
    """After each epoch: evaluate (every cfg.eval_every), log, save weights, then checkpoint."""

    def __init__(self, trainer, cfg, evaluator, manager: tf.train.CheckpointManager,
                 state: dict, run_log: RunLog, out_dir: str, steps_per_epoch: int):
        super().__init__()
        self.trainer, self.cfg, self.evaluator = trainer, cfg, evaluator
        self.manager, self.state, self.log = manager, state, run_log
        self.out_dir = out_dir
        self.steps_per_epoch = steps_per_epoch
        self._t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def _due(self, done: int) -> bool:
        every = self.cfg.eval_every
        return done == self.cfg.n_epochs or (every > 0 and done % every == 0)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        seconds = time.time() - self._t0
        record = {"epoch": done, "seconds": seconds,
                  "images_per_s": self.steps_per_epoch * self.cfg.bs / max(seconds, 1e-9)}
        record.update({f"train/{k}": float(np.mean(v)) for k, v in (logs or {}).items()})
        net_opt = self.trainer.optimizers["network"]
        record["lr"] = float(net_opt.learning_rate)
        if "heads" in self.trainer.optimizers:
            record["lr_heads"] = float(self.trainer.optimizers["heads"].learning_rate)
        for task, beta in self.trainer.objective.betas.items():
            record[f"beta_mean/{task}"] = float(np.mean(beta.numpy()))
        improved = False
        if self._due(done):
            scores = self.evaluator(self.trainer.embedder, force_test=done == self.cfg.n_epochs)
            record.update(scores)
            key = self.evaluator.selection_key
            if key in scores and scores[key] > float(self.state["best"].numpy()):
                self.state["best"].assign(scores[key])
                self.state["best_epoch"].assign(done)
                improved = True
            logging.info("epoch %d: %s", done, self.evaluator.summary(scores))
        self.log.write(record)
        wd.save_weights_atomic(self.trainer.embedder, wd.weights_path(self.out_dir, "last"))
        if improved:
            wd.save_weights_atomic(self.trainer.embedder, wd.weights_path(self.out_dir, "best"))
        self.state["epoch"].assign(done)
        self.manager.save(checkpoint_number=done)


def _is_statistic(name: str) -> bool:
    """A logged diagnostic (diva_tf.objectives.diagnostics), not a loss term."""
    return name in diagnostics.DANCE_STATISTICS or name.startswith("correlation_")


class NonFiniteLoss(FloatingPointError):
    """A loss term (or, after an epoch's last update, a weight) became NaN or inf."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops `fit` at the first step whose logged loss terms are not all finite (diagnostic
    statistics alone do not stop it), and at an epoch's end if its weights are not (an update that
    diverged on the last step), raising NonFiniteLoss.

    The logs are running means over the epoch, so a NaN at step s shows at step s. Listed before
    EpochEnd, it stops the run before anything of the diverged epoch is evaluated or saved: the
    workdir keeps the checkpoint, weights and metrics of the last good epoch.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _stop(self, where: str, what: str):
        raise NonFiniteLoss(f"non-finite {what} at epoch {self._epoch + 1}, {where}: training "
                            f"stopped; nothing of epoch {self._epoch + 1} was saved, the workdir "
                            f"keeps the run as of epoch {self._epoch} (rerunning resumes there)")

    def on_train_batch_end(self, batch, logs=None):
        bad = {k: float(np.mean(v)) for k, v in (logs or {}).items() if not np.all(np.isfinite(v))}
        terms = sorted((k for k in bad if not _is_statistic(k)), key=lambda k: k == "loss")  # sum last
        if terms:
            stats = len(bad) - len(terms)
            self._stop(f"step {batch + 1}", "loss " + ", ".join(f"{k}={bad[k]}" for k in terms)
                       + (f" (and {stats} diagnostic statistics)" if stats else ""))

    def on_epoch_end(self, epoch, logs=None):
        bad = [w.path for w in self.model.weights
               if "float" in str(w.dtype) and not bool(keras.ops.all(keras.ops.isfinite(w)))]
        if bad:
            self._stop("after its last step", f"weights ({len(bad)} variables, e.g. {bad[0]})")


class Progress(keras.callbacks.Callback):
    """A progress bar per epoch showing the loss terms and images/s."""

    def __init__(self, steps_per_epoch: int, batch_size: int, n_epochs: int):
        super().__init__()
        self.steps, self.bs, self.n_epochs = steps_per_epoch, batch_size, n_epochs
        self._bar = None
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        print(f"Epoch {epoch + 1}/{self.n_epochs}", flush=True)
        self._bar = None
        self._t0 = time.time()

    def on_train_batch_end(self, batch, logs=None):
        rate = (batch + 1) * self.bs / max(time.time() - self._t0, 1e-9)
        values = [(k, float(np.mean(v))) for k, v in (logs or {}).items()] + [("img/s", rate)]
        if self._bar is None:  # logs are running means already: show them as they are
            self._bar = keras.utils.Progbar(self.steps, stateful_metrics=[k for k, _ in values])
        self._bar.update(batch + 1, values=values, finalize=False)

    def on_epoch_end(self, epoch, logs=None):
        if self._bar is not None:
            self._bar.update(self.steps, finalize=True)
