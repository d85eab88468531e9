"""absl flags generated from `Config` fields, so each hyperparameter is declared once, and the
short `--help` of the command-line tools.

`config_from_flags()` is the only place where parsed flags become a `Config`; it validates before
any data is read, so a bad flag fails with one clear line. `use_short_help` makes `--help` (and
`--helpshort`) print a usage and one line per flag that matters, and exit 0; `--helpfull` keeps
absl's listing of every flag.
"""

from __future__ import annotations

import dataclasses
import re
import sys

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


def first_sentence(text: str) -> str:
    """Up to the first '. ' that ends a sentence (not 'e.g. ' / 'i.e. ')."""
    return re.split(r"(?<!e\.g\.)(?<!i\.e\.)(?<=\.)\s", text.strip(), maxsplit=1)[0]


def _default_text(flag) -> str:
    value = flag.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def short_help(usage: str, names, flag_values=FLAGS) -> str:
    """`usage`, then `--name=default  first sentence of its help` per flag of `names`, then where
    the other flags are."""
    rows = [(f"--{n}={_default_text(flag_values[n])}", first_sentence(flag_values[n].help or ""))
            for n in names]
    column = min(max(len(left) for left, _ in rows), 30)
    lines = [f"  {left.ljust(column)}  {text}".rstrip() for left, text in rows]
    return "\n".join([usage.strip(), "", "flags (--name=default):", *lines, "",
                      "Every flag, with its full help: --helpfull"]) + "\n"


class _ShortHelpFlag(flags.BooleanFlag):
    """--help / --helpshort: print the short help (built when asked) and exit 0."""

    def __init__(self, name: str, short_name: str | None, text):
        super().__init__(name, False, "Show the flags that matter and exit.",
                         short_name=short_name, allow_override=True, allow_hide_cpp=True)
        self._text = text

    def parse(self, argument) -> None:
        if self._parse(argument):
            sys.stdout.write(self._text())
            sys.exit(0)


def use_short_help(usage: str, names=None, flag_values=FLAGS) -> None:
    """Make --help / --helpshort print `short_help(usage, names)` and exit 0 (names default to the
    flags the __main__ module defines). Call before `app.run`."""
    from absl import app

    app.define_help_flags()  # absl's own; the two below replace its --help and --helpshort

    def text() -> str:
        listed = names if names is not None else [
            f.name for f in flag_values.get_key_flags_for_module("__main__")]
        return short_help(usage, listed, flag_values)

    flags.DEFINE_flag(_ShortHelpFlag("help", "?", text), flag_values)
    flags.DEFINE_flag(_ShortHelpFlag("helpshort", None, text), flag_values)


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
