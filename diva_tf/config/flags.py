"""absl flags generated from `Config` fields, so each hyperparameter is declared once.

`config_from_flags()` is the only place where parsed flags become a `Config`; it validates before
any data is read, so a bad flag fails with one clear line.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from diva_tf.config import Config

FLAGS = flags.FLAGS
_DEFINED = False


def define_flags() -> None:
    """Declare one absl flag per Config field (idempotent)."""
    global _DEFINED
    if _DEFINED:
        return
    for f in dataclasses.fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", f.name)
        if isinstance(default, bool):
            flags.DEFINE_bool(f.name, default, help_text)
        elif isinstance(default, int):
            flags.DEFINE_integer(f.name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(f.name, default, help_text)
        elif isinstance(default, list):
            flags.DEFINE_list(f.name, [str(v) for v in default], help_text)
        else:
            flags.DEFINE_string(f.name, default, help_text)
    _DEFINED = True


def _coerce_list(name: str, values: list, like: list) -> list:
    """Comma-list flag values -> the element type of the field's default."""
    kind = type(like[0]) if like else str
    if name == "eval_combinations":
        # ';' separates combinations because ',' separates weights.
        return [c.strip() for c in ",".join(values).split(";") if c.strip()]
    if name in ("tau", "recall_k", "head_dims"):
        kind = int
    try:
        return [kind(v) for v in values]
    except ValueError:
        from diva_tf.config import ConfigError
        raise ConfigError(f"--{name}={','.join(values)}: expected {kind.__name__} values") from None


def config_from_flags(flag_values=FLAGS) -> Config:
    """Parsed flags -> validated Config."""
    kw = {}
    defaults = Config()
    for f in dataclasses.fields(Config):
        value = flag_values[f.name].value
        if isinstance(getattr(defaults, f.name), list):
            value = _coerce_list(f.name, list(value or []), getattr(defaults, f.name))
        kw[f.name] = value
    return Config(**kw).validate()
