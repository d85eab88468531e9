"""Keras callbacks of a training run: end-of-epoch evaluation, best-model tracking, checkpoints
and logs (in that order, so a crash at any point resumes without a lost or repeated epoch), and a
progress line with the loss terms and images/s."""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from diva_tf import workdir as wd
from diva_tf.run_log import RunLog


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
