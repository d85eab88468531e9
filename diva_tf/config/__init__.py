"""Flags -> `Config`: the one place where command-line flags become a validated configuration
(`config.py`, the union of the option groups), the absl flags generated from its fields
(`flags.py`), and what needs a Config to work: a training run's folder, trained, resumed, loaded
and exported through its config.json (`run_folder.py`)."""

from diva_tf.config.config import GROUPS, Config
from diva_tf.core.errors import ConfigError
from diva_tf.core.options import Range
from diva_tf.evaluation.options import DEFAULT_HEAD_WEIGHTS, EVAL_TEST, parse_weights
from diva_tf.model.options import HEAD_NAMES

__all__ = ["DEFAULT_HEAD_WEIGHTS", "EVAL_TEST", "GROUPS", "HEAD_NAMES", "Config", "ConfigError",
           "Range", "parse_weights"]
