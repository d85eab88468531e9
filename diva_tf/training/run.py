"""`TrainingRun`: one training run in a run folder, the single implementation behind
`python -m diva_tf.train` and `diva_tf.train`.

Built from the splits and the option groups, it sets the seed and precision, picks the
tf.distribute strategy, and counts the steps per epoch (nothing is written yet). `fit()` then
builds the trainer under the strategy's scope, restores the folder's last checkpoint (resuming a
run), fills the key queue and evaluates the untrained network at epoch 0, and trains with `fit` and
the run's callbacks (progress, stop on a non-finite loss, end-of-epoch evaluation + log + weights +
checkpoint). The chief writes the run folder (`RunOptions.workdir`); every worker resumes from its
checkpoints (the same one, checked), and the others write what they must to a scratch folder
outside it, removed when they end. A worker lost mid-run stops the others with one line
(`WorkerLost`). Locking the folder and recording the configuration are the caller's.
"""

from __future__ import annotations

import os
import shutil

import keras
import tensorflow as tf
from absl import logging

from diva_tf.core.errors import ConfigError
from diva_tf.data import train_dataset
from diva_tf.data.options import PipelineOptions
from diva_tf.evaluation.in_run import Evaluator
from diva_tf.evaluation.options import EvaluationOptions
from diva_tf.model.options import ModelOptions
from diva_tf.objectives.options import ObjectiveOptions
from diva_tf.training import callbacks as cb
from diva_tf.training import workdir as wd
from diva_tf.training.checkpoints import check_same_everywhere, restore_newest, set_aside
from diva_tf.training.distribute import make_strategy, num_workers, scratch_dir, worker_lost
from diva_tf.training.options import OptimizerOptions, RunOptions
from diva_tf.training.run_log import RunLog
from diva_tf.training.trainer import DiVATrainer

QUEUE_SEED_OFFSET = 7919  # the key queue is filled from its own stream of batches (seed + this)


class TrainingRun:
    """The splits, strategy, trainer, evaluator, checkpoints, log and callbacks of one run."""

    def __init__(self, splits, *, model: ModelOptions, pipeline: PipelineOptions,
                 objective: ObjectiveOptions, optimizer: OptimizerOptions,
                 evaluation: EvaluationOptions, run: RunOptions, dataset: str | None = None,
                 chief: bool = True):
        self.splits, self.model, self.pipeline = splits, model, pipeline
        self.objective, self.optimizer = objective, optimizer
        self.evaluation, self.run = evaluation, run
        self.dataset, self.chief = dataset, chief
        keras.utils.set_random_seed(run.seed)
        if run.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        self.strategy = make_strategy(run.strategy)
        if (run.jit_compile and self.strategy.num_replicas_in_sync > 1
                and not tf.config.list_logical_devices("GPU")):
            raise ConfigError("--jit_compile with several CPU replicas does not compile (measured, "
                              "see README Performance); use one replica or drop --jit_compile")
        self.steps_per_epoch = pipeline.sampler(run.seed, run.steps_per_epoch).steps(
            len(splits.train.labels))
        self.num_classes = int(splits.train.labels.max()) + 1
        self.out_dir = run.workdir if chief else scratch_dir(run.workdir)

    def batches(self, seed: int, start_epoch: int = 0):
        """The training split's two-view batches (`train_dataset`) with this run's epoch length."""
        return train_dataset(self.splits.train, self.pipeline, seed, start_epoch,
                             self.steps_per_epoch)

    def build_trainer(self) -> DiVATrainer:
        """The compiled trainer (call under the strategy's scope)."""
        trainer = DiVATrainer(self.model, self.num_classes, batch_size=self.pipeline.bs,
                              objective=self.objective, seed=self.run.seed)
        trainer.compile(optimizer=self.optimizer, jit_compile=self.run.jit_compile)
        return trainer

    def fit(self) -> dict:
        """Train (resuming from the run folder's newest readable checkpoint); returns the best
        selection metric, its epoch and the run folder."""
        if self.chief:
            return self._fit()
        shutil.rmtree(self.out_dir, ignore_errors=True)  # left by a killed run of this worker
        try:
            return self._fit()
        finally:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def _fit(self) -> dict:
        run, spe = self.run, self.steps_per_epoch
        os.makedirs(self.out_dir, exist_ok=True)
        logging.info("%s: %d train images / %d classes, %d test images, %d steps/epoch, %d "
                     "replica(s)", self.dataset, len(self.splits.train.labels), self.num_classes,
                     len(self.splits.test.labels), spe, self.strategy.num_replicas_in_sync)
        with self.strategy.scope():
            trainer = self.trainer = self.build_trainer()
            state = {"epoch": tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch"),
                     "best": tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best"),
                     "best_epoch": tf.Variable(0, dtype=tf.int64, trainable=False,
                                               name="best_epoch")}
            optimizers = {f"optimizer_{k}": v for k, v in trainer.optimizers.items()}
            ckpt = tf.train.Checkpoint(trainer=trainer, **state, **optimizers)
        try:
            self._train(trainer, state, ckpt)
        except tf.errors.OpError as e:
            if num_workers() < 2:
                raise
            saved = int(state["epoch"].numpy())
            raise worker_lost(e, saved + 1, saved) from None
        result = {"best": float(state["best"].numpy()),
                  "best_epoch": int(state["best_epoch"].numpy()),
                  "selection": self.evaluator.selection_key, "workdir": run.workdir}
        logging.info("done: best %s = %.4f at epoch %d", result["selection"], result["best"],
                     result["best_epoch"])
        return result

    def _resume(self, ckpt) -> None:
        """Restore the chief's newest readable checkpoint (every worker reads the run folder's);
        with several workers, refuse unless all restored the same one."""
        directory = os.path.join(self.run.workdir, wd.CHECKPOINT_DIR)
        restored, damaged = restore_newest(ckpt, directory)
        if num_workers() > 1:
            check_same_everywhere(self.strategy, restored, directory)
        if damaged and self.chief:
            set_aside(damaged, restored)
        if restored:
            logging.info("resumed from %s (epoch %d)", restored, int(ckpt.epoch.numpy()))

    def _train(self, trainer, state, ckpt) -> None:
        run, spe = self.run, self.steps_per_epoch
        self._resume(ckpt)
        manager = tf.train.CheckpointManager(ckpt, os.path.join(self.out_dir, wd.CHECKPOINT_DIR),
                                             max_to_keep=run.keep_checkpoints)
        run_log = RunLog(os.path.join(self.out_dir, wd.METRICS_FILE),
                         os.path.join(self.out_dir, wd.TENSORBOARD_DIR) if self.chief else None)
        evaluator = self.evaluator = Evaluator(self.splits, self.model.diva_features,
                                               self.pipeline, self.evaluation, self.dataset)
        start = int(state["epoch"].numpy())
        if start > 0 and trainer.use_keys:
            trainer.queue_filled.assign(True)  # an older diva_tf's checkpoint has no such flag
        # Records of epochs after the checkpoint are a killed run's; before the first checkpoint
        # that includes epoch 0's, which is evaluated again below.
        run_log.truncate_after(start if start > 0 else -1)
        if start == 0:
            if trainer.use_keys:
                trainer.fill_queue(self.batches(run.seed + QUEUE_SEED_OFFSET))
            if run.eval_every > 0:
                scores = evaluator(trainer.embedder)
                logging.info("untrained: %s", evaluator.summary(scores))
                run_log.write({"epoch": 0, **scores})
        if start < run.n_epochs:
            # StopOnNonFinite before EpochEnd: nothing of a diverged epoch is evaluated or saved;
            # Progress after it: its epoch line shows the evaluation.
            progress = cb.Progress(spe, self.pipeline.bs, run.n_epochs)
            callbacks = [cb.StopOnNonFinite(),
                         cb.EpochEnd(trainer, evaluator, manager, state, run_log, self.out_dir,
                                     spe, self.pipeline.bs, run.n_epochs, run.eval_every),
                         progress]
            try:
                trainer.fit(self.batches(run.seed, start), epochs=run.n_epochs,
                            initial_epoch=start, steps_per_epoch=spe, callbacks=callbacks,
                            verbose=0)
            finally:
                progress.close()

