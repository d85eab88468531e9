"""The one exception the data package raises for problems a user must fix."""

from diva_tf.core.errors import DivaError


class DataError(DivaError, ValueError):
    """A dataset that cannot be used as configured; the message says what to do about it."""
