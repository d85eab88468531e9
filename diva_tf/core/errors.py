"""The errors diva_tf raises for things a user must fix: each message is one line saying what and
what to do. `DivaError` is their common base (Python API users can catch it); the command-line
entry points print the message and exit 2."""


class DivaError(Exception):
    """Base of every user-facing diva_tf error."""


class ConfigError(DivaError, ValueError):
    """A flag, option or combination of them that cannot work."""
