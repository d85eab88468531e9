"""Flags -> `Config`: the one place where command-line flags become a validated configuration
(`config.py`, the union of the option groups) and the absl flags generated from its fields
(`flags.py`). A run folder trained, resumed, loaded and exported through its config.json is
`diva_tf.runs`."""

from diva_tf.config.config import Config
from diva_tf.core.errors import ConfigError
from diva_tf.evaluation.options import parse_weights
from diva_tf.model.options import HEAD_NAMES

__all__ = ["HEAD_NAMES", "Config", "ConfigError", "parse_weights"]
