"""The errors diva_tf raises for things a user must fix: each message is one line saying what and
what to do. `DivaError` is their common base (Python API users can catch it); the command-line
entry points print the message and exit 2."""


class DivaError(Exception):
    """Base of every user-facing diva_tf error."""


class ConfigError(DivaError, ValueError):
    """A flag, option or combination of them that cannot work."""


def describe(error: BaseException, limit: int = 160) -> str:
    """'TypeName: message' on one line, cut to `limit` characters: why a third-party call failed,
    inside a diva_tf error's one-line message."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"
