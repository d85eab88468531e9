"""Renamed keyword arguments of the Python API, accepted for one release (as the command line keeps
old flag names through `core.cli.define_renamed`)."""

from __future__ import annotations

import functools
import warnings


def renamed_keywords(**new_by_old: str):
    """Decorator: `old=value` still works as `new=value` with a DeprecationWarning; both is a
    TypeError, as any argument given twice."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            for old, new in new_by_old.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got {old}= and {new}=: {old} is the old "
                                    f"name of {new}, pass only {new}=")
                warnings.warn(f"{fn.__name__}({old}=...) is renamed {new}=; the old name goes away "
                              "in the next release", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return call
    return wrap
