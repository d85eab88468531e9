"""Keras callbacks of a training run: end-of-epoch evaluation, best-model tracking, checkpoints
and logs (in that order, so a crash at any point resumes without a lost or repeated epoch), a stop
at the first non-finite loss (before anything of that epoch is saved), and the console output: a
progress line that fits one terminal row, then one summary line per epoch."""

from __future__ import annotations

import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from diva_tf.core.errors import DivaError
from diva_tf.objectives import diagnostics
from diva_tf.training import workdir as wd
from diva_tf.training.distribute import replica_disagreement
from diva_tf.training.run_log import RunLog


REPLICA_DISAGREEMENT = "replicas/weight_disagreement"


class EpochEnd(keras.callbacks.Callback):
    """After each epoch: evaluate (every `eval_every` epochs and at the last), check that the
    replicas agree, log, save weights, then checkpoint."""

    def __init__(self, trainer, evaluator, manager: tf.train.CheckpointManager, state: dict,
                 run_log: RunLog, out_dir: str, steps_per_epoch: int, batch_size: int,
                 n_epochs: int, eval_every: int):
        super().__init__()
        self.trainer, self.evaluator = trainer, evaluator
        self.manager, self.state, self.log = manager, state, run_log
        self.out_dir = out_dir
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.n_epochs, self.eval_every = n_epochs, eval_every
        self._t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def _due(self, done: int) -> bool:
        every = self.eval_every
        return done == self.n_epochs or (every > 0 and done % every == 0)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        seconds = time.time() - self._t0
        record = {"epoch": done, "seconds": seconds,
                  "images_per_s": self.steps_per_epoch * self.batch_size / max(seconds, 1e-9)}
        record.update({f"train/{k}": float(np.mean(v)) for k, v in (logs or {}).items()})
        net_opt = self.trainer.optimizers["network"]
        record["lr"] = float(net_opt.learning_rate)
        if "heads" in self.trainer.optimizers:
            record["lr_heads"] = float(self.trainer.optimizers["heads"].learning_rate)
        for task, beta in self.trainer.objective.betas.items():
            record[f"beta_mean/{task}"] = float(np.mean(beta.numpy()))
        strategy = self.trainer.distribute_strategy
        if strategy.num_replicas_in_sync > 1:
            # 0 when every replica, on every worker, holds the same weights (measured each epoch).
            record[REPLICA_DISAGREEMENT] = replica_disagreement(strategy, self.trainer.weights)
            if record[REPLICA_DISAGREEMENT]:
                logging.warning("epoch %d: the replicas' weights differ (%s = %g)", done,
                                REPLICA_DISAGREEMENT, record[REPLICA_DISAGREEMENT])
        improved = False
        if self._due(done):
            scores = self.evaluator(self.trainer.embedder, force_test=done == self.n_epochs)
            record.update(scores)
            key = self.evaluator.selection_key
            if key in scores and scores[key] > float(self.state["best"].numpy()):
                self.state["best"].assign(scores[key])
                self.state["best_epoch"].assign(done)
                improved = True
            logging.debug("epoch %d: %s", done, self.evaluator.summary(scores))
            note_selection(logs, key, scores, improved)
        self.log.write(record)
        wd.save_weights_atomic(self.trainer.embedder, wd.weights_path(self.out_dir, "last"))
        if improved:
            wd.save_weights_atomic(self.trainer.embedder, wd.weights_path(self.out_dir, "best"))
        self.state["epoch"].assign(done)
        self.manager.save(checkpoint_number=done)


class NonFiniteLoss(DivaError, FloatingPointError):
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
        terms = sorted((k for k in bad if not diagnostics.is_statistic(k)),
                       key=lambda k: k == "loss")  # the sum last
        if terms:
            stats = len(bad) - len(terms)
            self._stop(f"step {batch + 1}", "loss " + ", ".join(f"{k}={bad[k]}" for k in terms)
                       + (f" (and {stats} diagnostic statistics)" if stats else ""))

    def on_epoch_end(self, epoch, logs=None):
        bad = [w.path for w in self.model.weights
               if "float" in str(w.dtype) and not bool(keras.ops.all(keras.ops.isfinite(w)))]
        if bad:
            self._stop("after its last step", f"weights ({len(bad)} variables, e.g. {bad[0]})")


# Console names of the loss terms in the epoch summary line, in its order (others follow them
# under their logged names).
SHORT_TERMS = {"discriminative": "disc", "selfsimilarity": "selfsim", "shared": "shared",
               "intra": "intra", "decorrelation": "decorr"}
# Key of the selection metric EpochEnd puts into `logs` when it evaluated (see `note_selection`).
SELECTED = "selected/"
SELECTED_IMPROVED = "selected_improved"


def note_selection(logs, key: str, scores: dict, improved: bool) -> None:
    """Hand an evaluated epoch's selection metric (scores[key]) to Progress through Keras's `logs`,
    which every callback of the epoch's end receives in list order: Progress, listed after
    EpochEnd, prints it in the epoch's summary line."""
    if logs is not None and key in scores:
        logs[SELECTED + key] = float(scores[key])
        logs[SELECTED_IMPROVED] = float(improved)


def _duration(seconds: float) -> str:
    """1:05, 1:02:03."""
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def fit_fields(fields: list, width: int) -> str:
    """The leading fields joined by two spaces that fit in `width` characters (at least the first,
    cut to `width`)."""
    line = fields[0]
    for f in fields[1:]:
        if len(line) + 2 + len(f) > width:
            break
        line += "  " + f
    return line[:max(width, 1)]


def metric_label(key: str) -> str:
    """'val/combined[1,1,1,1]/recall@1' -> 'val R@1'."""
    parts = key.split("/")
    metric = parts[-1].replace("recall@", "R@")
    return f"{parts[0]} {metric}" if len(parts) > 1 else metric


def progress_line(epoch: int, n_epochs: int, step: int, steps: int, loss: float, rate: float,
                  eta: float, width: int) -> str:
    """One terminal row: epoch, step/steps, loss, img/s, ETA (the later fields drop first)."""
    return fit_fields([f"epoch {epoch}/{n_epochs}", f"{step}/{steps}", f"loss {loss:.4f}",
                       f"{rate:.0f} img/s", f"ETA {_duration(eta)}"], width)


def summary_line(epoch: int, n_epochs: int, logs: dict, seconds: float,
                 images_per_s: float) -> str:
    """The epoch's one line: loss with its terms, img/s, training time, and the selection metric
    when the epoch was evaluated (`note_selection`)."""
    values = {k: float(np.mean(v)) for k, v in (logs or {}).items()}
    selected = {k[len(SELECTED):]: v for k, v in values.items() if k.startswith(SELECTED)}
    names = [k for k in values if k not in ("loss", SELECTED_IMPROVED)
             and not k.startswith(SELECTED) and not diagnostics.is_statistic(k)]
    order = list(SHORT_TERMS)
    names.sort(key=lambda k: order.index(k) if k in order else len(order))
    terms = [f"{SHORT_TERMS.get(k, k)} {values[k]:.3g}" for k in names]
    loss = f"loss {values.get('loss', float('nan')):.4f}"
    parts = [f"epoch {epoch}/{n_epochs}", loss + (f" ({' '.join(terms)})" if terms else ""),
             f"{images_per_s:.0f} img/s", f"{seconds:.1f} s"]
    best = " (best)" if values.get(SELECTED_IMPROVED) else ""
    parts += [f"{metric_label(k)} {v:.4f}{best}" for k, v in selected.items()]
    return "  ".join(parts)


class Progress(keras.callbacks.Callback):
    """Console output of `fit`: while an epoch runs, a progress line that fits one terminal row,
    redrawn in place on a terminal and printed every `log_every` seconds (plain text) otherwise;
    then one summary line per epoch (`summary_line`). The per-term numbers and diagnostics are in
    metrics.jsonl and TensorBoard.

    List it after EpochEnd so that its summary line includes the evaluation (`note_selection`).
    """

    def __init__(self, steps_per_epoch: int, batch_size: int, n_epochs: int, stream=None,
                 log_every: float = 30.0, clock=time.monotonic):
        super().__init__()
        self.steps, self.bs, self.n_epochs = steps_per_epoch, batch_size, n_epochs
        self.stream, self.log_every, self.clock = stream, log_every, clock
        self._epoch, self._t0, self._t_steps, self._shown = 0, 0.0, 0.0, 0.0
        self._drawn = 0  # length of the line drawn in place (terminal only)

    @property
    def _out(self):
        return self.stream or sys.stdout

    def _is_tty(self) -> bool:
        return bool(getattr(self._out, "isatty", lambda: False)())

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _erase(self) -> None:
        """Blank the line drawn in place, leaving the cursor at its start."""
        if self._drawn:
            self._write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._t0 = self._t_steps = self._shown = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        now = self._t_steps = self.clock()
        done = batch + 1
        tty = self._is_tty()
        if done >= self.steps:
            self._erase()  # what is printed next (evaluation logs, summary) starts a clean row
            return
        if now - self._shown < (0.1 if tty else self.log_every):
            return
        self._shown = now
        elapsed = max(now - self._t0, 1e-9)
        loss = float(np.mean((logs or {}).get("loss", np.nan)))
        width = shutil.get_terminal_size().columns - 1
        line = progress_line(self._epoch + 1, self.n_epochs, done, self.steps, loss,
                             done * self.bs / elapsed, elapsed / done * (self.steps - done), width)
        if tty:
            self._write("\r" + line.ljust(self._drawn))
            self._drawn = len(line)
        else:
            self._write(line + "\n")

    def on_train_end(self, logs=None):
        self._erase()

    def close(self) -> None:
        """Blank a row left drawn by a run that raised mid-epoch (Keras calls no `on_train_end`
        then), so the error message starts its own row."""
        self._erase()

    def on_epoch_end(self, epoch, logs=None):
        self._erase()
        seconds = max(self._t_steps - self._t0, 1e-9)
        self._write(summary_line(epoch + 1, self.n_epochs, logs, seconds,
                                 self.steps * self.bs / seconds) + "\n")
