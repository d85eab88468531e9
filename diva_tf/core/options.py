"""Option groups: small dataclasses of hyperparameters, each defined in the layer that uses it and
validated there. `diva_tf.config.Config` is their union (one declaration per hyperparameter).

A field is declared with `option(default, help, Range, choices=(registry, what))`: the help text
becomes the flag's, a numeric field must declare the `Range` it accepts (NaN and inf never are),
and a name field may declare the registry its value must be a key of. A group's `validate()`
checks the fields it declares (`checked`: choices, then ranges) and its own rules, raising
`ConfigError` naming the flag.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from diva_tf.core.choices import lookup
from diva_tf.core.errors import ConfigError


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _show(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts; NaN and inf never are (`check_ranges` checks every
    field that declares one, and every element of a list field)."""
    low: float
    high: float | None = None
    low_open: bool = False   # low itself is excluded
    high_open: bool = False  # high itself is excluded
    also: tuple = ()         # values accepted outside the range (e.g. -1 = share --lr)

    def __contains__(self, v) -> bool:
        if not _is_number(v):
            return False
        if v in self.also:
            return True
        if not math.isfinite(v):
            return False
        above = self.low is None or (v > self.low if self.low_open else v >= self.low)
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            text = f"{'>' if self.low_open else '>='} {_show(self.low)}"
        else:
            text = (f"in {'(' if self.low_open else '['}{_show(self.low)}, {_show(self.high)}"
                    f"{')' if self.high_open else ']'}")
        return " or ".join([*map(_show, self.also), text])


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)          # [0, 1): momenta, held-out fractions
SPHERE_DISTANCE = Range(0, 2, True, True)       # distance clamps between unit vectors
COSINE = Range(-1, 1)
SEED = Range(0, 2 ** 32 - 1)                    # numpy's seed range


def option(default, help_text: str, allowed: Range | None = None, choices: tuple | None = None,
           **kw):
    """A dataclass field carrying its flag help text, for numbers the Range it accepts, and for a
    name the (registry, what it names) its value must be a key of."""
    items = default if isinstance(default, (list, tuple)) else [default]
    if allowed is None and items and all(_is_number(v) for v in items):
        raise TypeError(f"numeric option ({help_text!r}) needs an allowed Range")
    meta = {"help": help_text, "range": allowed, **kw}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


def declared_fields(group: type) -> list:
    """The dataclass fields `group` itself declares (not those it inherits)."""
    own = group.__dict__.get("__annotations__", {})
    return [f for f in dataclasses.fields(group) if f.name in own]


def check_ranges(options, group: type) -> None:
    """Every field `group` declares that has a Range (each element of a list field) lies in it."""
    for f in declared_fields(group):
        allowed = f.metadata.get("range")
        value = getattr(options, f.name)
        if allowed is None:
            continue
        values = value if isinstance(value, list) else [value]
        if any(_is_number(v) and not math.isfinite(v) and v not in allowed.also for v in values):
            shown = ",".join(map(str, values))
            raise ConfigError(f"--{f.name}={shown}: must be a finite number ({allowed})")
        if not isinstance(value, list) and value not in allowed:
            raise ConfigError(f"--{f.name} must be {allowed} (got {value})")
        if isinstance(value, list) and not all(v in allowed for v in value):
            raise ConfigError(f"--{f.name}={','.join(map(str, value))}: every value must be "
                              f"{allowed}")


def check_choices(options, group: type) -> None:
    """Every field `group` declares with choices holds a key of its registry."""
    for f in declared_fields(group):
        if "choices" in f.metadata:
            registry, what = f.metadata["choices"]
            lookup(registry, f.name, getattr(options, f.name), what, ConfigError)


def checked(options, group: type):
    """`options` after the checks of the fields `group` declares: choices, then ranges."""
    check_choices(options, group)
    check_ranges(options, group)
    return options


def require(condition, message: str) -> None:
    """ConfigError(message) unless condition."""
    if not condition:
        raise ConfigError(message)


class Options:
    """Base of the option groups (plain dataclasses). `validate()` checks the fields the group
    declares (`checked`: choices, then ranges) and returns it; a group with more rules defines its
    own. Also `replace` and `to_dict`."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "validate" not in cls.__dict__:
            cls.validate = lambda self, group=cls: checked(self, group)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
