"""Train DiVA: `python -m diva_tf.train --flagfile=configs/<name>.flags [--flag=value ...]`.

Orchestration only: flags -> Config (validated before any data is read), the --workdir lock, data,
strategy, trainer, checkpoint restore, queue fill, `fit`, and the end-of-epoch callbacks. Rerunning
the same command resumes from the last checkpoint in --workdir; a loss that becomes NaN or inf stops
the run (exit 2) before anything of that epoch is saved.
"""

from __future__ import annotations

import contextlib
import os
import sys

from absl import app, flags, logging

from diva_tf.config import Config, ConfigError
from diva_tf.config.flags import config_from_flags, define_flags

define_flags()

# Fields that may change between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = {"n_epochs", "eval_every", "keep_checkpoints", "eval_batch_size", "strategy",
                     "jit_compile", "data_dir", "tfds_data_dir", "workdir", "eval_combinations",
                     "recall_k", "cache_images", "eval_test"}


def check_resume_compatible(saved: Config, cfg: Config) -> None:
    diff = {k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items()
            if k not in RESUMABLE_CHANGES and getattr(cfg, k) != v}
    if diff:
        lines = ", ".join(f"--{k}: run has {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(f"{cfg.workdir} holds a run with other settings ({lines}); "
                          "use a new --workdir or the same flags to resume")


def check_workdir(cfg: Config) -> None:
    """Refuse to resume a run trained with other settings (no side effects)."""
    from diva_tf.training import workdir as wd

    cfg_path = os.path.join(cfg.workdir, wd.CONFIG_FILE)
    if os.path.exists(cfg_path):
        check_resume_compatible(Config.load(cfg_path), cfg)


def prepare_workdir(cfg: Config, chief: bool) -> str:
    """The chief writes to --workdir; other workers to a scratch folder inside it."""
    from diva_tf.training import workdir as wd

    out = cfg.workdir if chief else os.path.join(cfg.workdir, f"worker_scratch_{os.getpid()}")
    os.makedirs(out, exist_ok=True)
    if chief:
        cfg.save(os.path.join(cfg.workdir, wd.CONFIG_FILE))
    return out


def run(cfg: Config) -> dict:
    """Train according to cfg; returns the final record (best selection metric and epoch).

    The chief is the only writer of --workdir: it locks it before TensorFlow is imported or any
    data is read, so a second run on the same workdir is refused at once (other workers write to
    scratch folders and do not lock)."""
    from diva_tf.training.distribute import is_chief
    from diva_tf.training.workdir import WorkdirLock

    chief = is_chief()
    with WorkdirLock(cfg.workdir) if chief else contextlib.nullcontext():
        check_workdir(cfg)
        return _train(cfg, chief)


def _train(cfg: Config, chief: bool) -> dict:
    """`run` once the workdir is this process's."""
    import keras
    import tensorflow as tf

    from diva_tf.training import callbacks as cb
    from diva_tf import data
    from diva_tf.training import workdir as wd
    from diva_tf.training.distribute import make_strategy
    from diva_tf.evaluation.in_run import Evaluator
    from diva_tf.training.run_log import RunLog
    from diva_tf.training.trainer import DiVATrainer

    keras.utils.set_random_seed(cfg.seed)
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    splits = data.load_splits(cfg)
    strategy = make_strategy(cfg)
    if (cfg.jit_compile and strategy.num_replicas_in_sync > 1
            and not tf.config.list_logical_devices("GPU")):
        raise ConfigError("--jit_compile with several CPU replicas does not compile (measured, see "
                          "README Performance); use one replica or drop --jit_compile")
    out = prepare_workdir(cfg, chief)
    spe = data.Sampler.from_config(cfg).steps(len(splits.train.labels))
    num_classes = int(splits.train.labels.max()) + 1
    logging.info("%s: %d train images / %d classes, %d test images, %d steps/epoch, %d replica(s)",
                 cfg.dataset, len(splits.train.labels), num_classes, len(splits.test.labels), spe,
                 strategy.num_replicas_in_sync)

    with strategy.scope():
        trainer = DiVATrainer(cfg, num_classes, spe)
        trainer.compile_for_training()
        state = {"epoch": tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch"),
                 "best": tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best"),
                 "best_epoch": tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")}
        ckpt = tf.train.Checkpoint(trainer=trainer, **state,
                                   **{f"optimizer_{k}": v for k, v in trainer.optimizers.items()})
    manager = tf.train.CheckpointManager(ckpt, os.path.join(out, wd.CHECKPOINT_DIR),
                                         max_to_keep=cfg.keep_checkpoints)
    run_log = RunLog(os.path.join(out, wd.METRICS_FILE),
                     os.path.join(out, wd.TENSORBOARD_DIR) if chief else None)
    evaluator = Evaluator(cfg, splits)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s (epoch %d)", manager.latest_checkpoint, int(state["epoch"].numpy()))
    start = int(state["epoch"].numpy())
    run_log.truncate_after(start)
    if start == 0:
        if trainer.use_keys:
            trainer.fill_queue(data.train_dataset(splits.train, cfg.replace(seed=cfg.seed + 7919)))
        if cfg.eval_every > 0:
            scores = evaluator(trainer.embedder)
            logging.info("untrained: %s", evaluator.summary(scores))
            run_log.write({"epoch": 0, **scores})
    if start < cfg.n_epochs:
        dataset = data.train_dataset(splits.train, cfg, start_epoch=start, steps_per_epoch=spe)
        # StopOnNonFinite before EpochEnd: nothing of a diverged epoch is evaluated or saved.
        callbacks = [cb.Progress(spe, cfg.bs, cfg.n_epochs), cb.StopOnNonFinite(),
                     cb.EpochEnd(trainer, cfg, evaluator, manager, state, run_log, out, spe)]
        trainer.fit(dataset, epochs=cfg.n_epochs, initial_epoch=start, steps_per_epoch=spe,
                    callbacks=callbacks, verbose=0)
    result = {"best": float(state["best"].numpy()), "best_epoch": int(state["best_epoch"].numpy()),
              "selection": evaluator.selection_key, "workdir": cfg.workdir}
    logging.info("done: best %s = %.4f at epoch %d", result["selection"], result["best"],
                 result["best_epoch"])
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]} (flags need --name=value)")
    from diva_tf.model.backbones.registry import BackboneError
    from diva_tf.data.errors import DataError

    try:
        run(config_from_flags())
    except (ConfigError, DataError, BackboneError, FloatingPointError) as e:
        # FloatingPointError: callbacks.NonFiniteLoss, a loss term that became NaN or inf.
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main)
