"""What a command-line entry point does with a mistake its user must fix: a `DivaError` (and any
other exception type the entry point names) becomes one line, `error: <message>`, on stderr and
exit status 2, never a traceback. Every entry point's `main` wears `reports_errors`, and its flags
are parsed by `parse_flags`.

Flag names mean one thing across the entry points (`--export_dir` is an export, `--seed` the
training seed, `--eval_batch_size` images per embedding call); a renamed flag keeps its old name for
one release through `define_renamed`: it still works, and says once on stderr what to write
instead."""

from __future__ import annotations

import functools
import sys

from diva_tf.core.errors import ConfigError, DivaError


def one_line(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(str(error).splitlines())


def reports_errors(*also: type):
    """Decorator of an entry point's `main(...) -> int`: DivaError and the `also` types -> the
    message on stderr as `error: ...`, return 2."""
    caught = (DivaError, *also)

    def decorate(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except caught as e:
                print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
                return 2
        return run
    return decorate


# old flag name -> new name, for the flags defined through define_renamed.
_RENAMED: dict[str, str] = {}


def define_renamed(old: str, new: str, flag_values=None) -> None:
    """Keep `--old` working as an alias of the already defined `--new` for one release."""
    from absl import flags

    flags.DEFINE_alias(old, new, flag_values=flag_values or flags.FLAGS)
    _RENAMED[old] = new


def renamed_warnings(flag_values) -> list[str]:
    """One warning per old flag name on the command line; ConfigError when the old and the new
    name are both given."""
    warnings = []
    for old, new in _RENAMED.items():
        if old not in flag_values or not flag_values[old].present:
            continue
        if flag_values[new].present > flag_values[old].present:
            raise ConfigError(f"--{old} is the old name of --{new}: pass only --{new}")
        warnings.append(f"warning: --{old} is renamed --{new}; the old name goes away in the next "
                        f"release")
    return warnings


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`: a flag that cannot be
    parsed (unknown, malformed, missing) is one line and exit 2, as every other flag error (absl
    itself exits 1); an old flag name prints what replaces it."""
    from absl import flags

    try:
        args = flags.FLAGS(argv)
        warnings = renamed_warnings(flags.FLAGS)
    except (flags.Error, ConfigError) as e:
        print(f"error: {one_line(e)} (--help lists the flags)", file=sys.stderr, flush=True)
        sys.exit(2)
    for warning in warnings:
        print(warning, file=sys.stderr, flush=True)
    return args
