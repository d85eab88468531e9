"""Flags -> `Config`: the one place where command-line flags become a validated configuration
(`config.py`), and the absl flags generated from its fields (`flags.py`)."""

from diva_tf.config.config import (DEFAULT_HEAD_WEIGHTS, EVAL_TEST, HEAD_NAMES, Config, Range,
                                   parse_weights)
from diva_tf.core.errors import ConfigError

__all__ = ["DEFAULT_HEAD_WEIGHTS", "EVAL_TEST", "HEAD_NAMES", "Config", "ConfigError", "Range",
           "parse_weights"]
