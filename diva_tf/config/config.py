"""The one place where flags become a config.

`Config` is the union of the option groups, each defined (and validated) in the layer that uses it:
`DataOptions` and `PipelineOptions` (diva_tf.data), `ModelOptions` (diva_tf.model),
`ObjectiveOptions` (diva_tf.objectives), `EvaluationOptions` (diva_tf.evaluation),
`OptimizerOptions` and `RunOptions` (diva_tf.training). Every hyperparameter is declared once, in
its group, with the default of docs/algorithm.md section 6 (where the tool deviates, the field's help
says so); a Config is an instance of every group, so it can be handed to anything that takes one.
`diva_tf.config.flags` turns the fields into absl flags, so a flag and its field cannot drift
apart. Every numeric field declares the `Range` it accepts (a numeric field without one fails at
import), and `Config.validate` runs every group's checks, NaN and inf refused, then the checks
across groups, before any data is read. The choices of --dataset, --data_sampler, --backbone,
--head_pooling, --loss, --diva_ssl, --optimizer, --scheduler and --strategy are the keys of the
registries in the modules that build them; none imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from diva_tf.core.atomic import atomic_file
from diva_tf.core.errors import ConfigError
from diva_tf.core.options import require
from diva_tf.data.options import DataOptions, PipelineOptions
from diva_tf.evaluation.options import EvaluationOptions, published_head_weights
from diva_tf.model.options import ModelOptions
from diva_tf.objectives.options import ObjectiveOptions
from diva_tf.training.options import OptimizerOptions, RunOptions

# In field order (dataclasses list the fields of the last base first).
GROUPS = (DataOptions, PipelineOptions, ModelOptions, ObjectiveOptions, OptimizerOptions,
          EvaluationOptions, RunOptions)


@dataclass
class Config(RunOptions, EvaluationOptions, OptimizerOptions, ObjectiveOptions, ModelOptions,
             PipelineOptions, DataOptions):
    """Every hyperparameter of a training run (the union of the option groups)."""

    @property
    def head_weights(self) -> tuple:
        """Default test-time weights for the configured heads (algorithm.md 2.4)."""
        return published_head_weights(self.dataset, self.diva_features)

    @property
    def decorrelation_directions(self) -> list:
        """(source, target) pairs decorrelated by the regressors (algorithm.md 4.6)."""
        return self.directions(self.diva_features)

    def validate(self) -> "Config":
        """Every group's checks, then those across groups; raises ConfigError naming the
        offending flag, returns self."""
        for group in GROUPS:
            group.validate(self)
        feats = list(self.diva_features)
        require(self.samples_per_class >= 2 or feats == ["selfsimilarity"],
                "--samples_per_class must be >= 2: the margin losses need a positive per anchor")
        self.check_heads(feats)
        self.combinations(feats)
        return self

    # ---- (de)serialisation ---------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write then rename: a crash never leaves a half-written config.json."""
        with atomic_file(path) as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {unknown}")
        return cls(**d)

    @classmethod
    def load(cls, path: str) -> "Config":
        if not os.path.exists(path):
            raise ConfigError(f"no config at {path}: is this a diva_tf workdir?")
        try:
            with open(path) as f:
                saved = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not a diva_tf config ({type(e).__name__}: {e}); restore "
                              "it or use another folder") from None
        if not isinstance(saved, dict):
            raise ConfigError(f"{path} is not a diva_tf config (a JSON {type(saved).__name__}, "
                              "not an object); restore it or use another folder")
        try:
            return cls.from_dict(saved)
        except TypeError as e:
            raise ConfigError(f"{path} is not a diva_tf config ({e})") from None
