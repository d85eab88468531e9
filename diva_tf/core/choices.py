"""Looking a flag's value up in the registry of its choice (the registries live with the code they
build: datasets in `diva_tf.data`, samplers in `diva_tf.data.sampler`, backbones in
`diva_tf.model.backbones.registry`, losses and miners in `diva_tf.objectives.registry`)."""

from __future__ import annotations

from typing import Mapping


def lookup(registry: Mapping, flag: str, value, what: str, error: type = ValueError):
    """registry[value]; otherwise `error` with one line naming the flag, the value and the choices."""
    if value not in registry:
        raise error(f"--{flag}={value!r}: unknown {what}; choose one of {', '.join(registry)}")
    return registry[value]
