"""Train DiVA: `python -m diva_tf.train --flagfile=configs/<name>.flags [--flag=value ...]`.

Flags -> Config (validated before any data is read), then `diva_tf.runs.run_folder.train`: the
--workdir lock, data, and `diva_tf.training.run.TrainingRun` (strategy, trainer, checkpoint
restore, queue fill, `fit` with the run's callbacks), the implementation `diva_tf.train` gives
Python users too. Rerunning the same command resumes from the last checkpoint in --workdir; a loss
that becomes NaN or inf stops the run (exit 2) before anything of that epoch is saved.
"""

from __future__ import annotations

from absl import app

from diva_tf.config.flags import config_from_flags, define_flags, use_short_help
from diva_tf.core.cli import parse_flags, reports_errors
from diva_tf.runs.run_folder import train as run

__all__ = ["flags", "main", "run"]

USAGE = """Train a DiVA model (several embedding heads learned together) into --workdir; rerunning
the same command resumes the run.

usage: python -m diva_tf.train --flagfile=configs/<name>.flags [--flag=value ...]
       (flags after --flagfile override the file; start with configs/quickstart.flags)"""
# The training flags a user sets, in the order --help lists them.
KEY_FLAGS = ("dataset", "data_dir", "train_classes", "test_classes", "val_classes_fraction",
             "workdir", "backbone", "backbone_weights", "diva_features", "n_epochs", "bs", "lr",
             "eval_every")



def flags() -> None:
    """Define the training flags and the short --help (what `python -m diva_tf.train` parses)."""
    define_flags()
    use_short_help(USAGE, KEY_FLAGS)


@reports_errors()
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]} (flags need --name=value)")
    run(config_from_flags())
    return 0


if __name__ == "__main__":
    from diva_tf.core.quiet import quiet_third_party

    quiet_third_party()  # before TensorFlow is imported (by the run)
    flags()
    app.run(main, flags_parser=parse_flags)
