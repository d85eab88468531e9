"""What a command-line entry point does with a mistake its user must fix: a `DivaError` (and any
other exception type the entry point names) becomes one line, `error: <message>`, on stderr and
exit status 2, never a traceback. Every entry point's `main` wears `reports_errors`, and its flags
are parsed by `parse_flags`."""

from __future__ import annotations

import functools
import sys

from diva_tf.core.errors import DivaError


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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`: a flag that cannot be
    parsed (unknown, malformed, missing) is one line and exit 2, as every other flag error (absl
    itself exits 1)."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {one_line(e)} (--help lists the flags)", file=sys.stderr, flush=True)
        sys.exit(2)
