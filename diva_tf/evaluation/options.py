"""The evaluation option group (`EvaluationOptions`: batch size, head-weight combinations, Recall@k
cut-offs, when the test split is evaluated), the published test-time head weights per dataset
(algorithm.md 2.4) and the parsing of a head-weight combination."""

from __future__ import annotations

from dataclasses import dataclass

from diva_tf.core.errors import ConfigError
from diva_tf.core.options import NON_NEGATIVE, POSITIVE, Options, checked, option, require
from diva_tf.data.options import DEFAULT_EVAL_BATCH
from diva_tf.model.options import HEAD_NAMES

EVAL_TEST = ("always", "val_improved")

# Test-time head weights behind the published numbers (algorithm.md 2.4), in HEAD_NAMES order.
DEFAULT_HEAD_WEIGHTS = {
    "cub200": (0.5, 1.0, 1.0, 1.0),
    "cars196": (0.5, 2.0, 2.0, 2.0),
    "sop": (1.0, 1.0, 1.0, 1.0),
}


def published_head_weights(dataset: str | None, heads) -> tuple:
    """Default test-time weights of `heads` for a dataset (algorithm.md 2.4; 1 for every head elsewhere)."""
    full = DEFAULT_HEAD_WEIGHTS.get(dataset, (1.0,) * len(HEAD_NAMES))
    return tuple(full[HEAD_NAMES.index(h)] for h in heads)


def default_combinations(dataset: str | None, heads) -> list:
    """The combinations evaluated when none are given: the published weights when there are
    several heads, none for a single head."""
    return [published_head_weights(dataset, heads)] if len(heads) > 1 else []


def parse_weights(text: str, n_heads: int) -> tuple:
    """'0.5,1,1,1' -> (0.5, 1.0, 1.0, 1.0), checked against the number of heads."""
    try:
        weights = tuple(float(w) for w in str(text).split(","))
    except ValueError:
        raise ConfigError(f"head weights {text!r}: expected comma-separated numbers") from None
    if len(weights) != n_heads:
        raise ConfigError(f"head weights {text!r} give {len(weights)} values for {n_heads} heads")
    if not all(w in NON_NEGATIVE for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"head weights {text!r}: need finite non-negative weights, not all zero")
    return weights


@dataclass
class EvaluationOptions(Options):
    """How a training run evaluates: its batch size, embeddings, cut-offs and test-split rule."""

    eval_batch_size: int = option(DEFAULT_EVAL_BATCH, "Batch size for embedding the evaluation splits.", POSITIVE)
    eval_combinations: list = option([], "Head-weight combinations to evaluate, e.g. "
                                     "'0.5,1,1,1' (default: the dataset's published weights).")
    eval_test: str = option("always", "always: evaluate the test split at every evaluation | "
                            "val_improved: with a validation split, only when some embedding's "
                            "validation R@1 improves, and at the last epoch (what a validation-"
                            "based selection needs, for less compute).")
    recall_k: list = option([], "Recall@k values (default 1,2,4,8; SOP 1,10,100,1000).", POSITIVE)

    def validate(self) -> "EvaluationOptions":
        checked(self, EvaluationOptions)
        require(self.eval_test in EVAL_TEST,
                f"--eval_test={self.eval_test!r}: choose one of {', '.join(EVAL_TEST)}")
        return self

    def combinations(self, heads) -> list:
        """The parsed --eval_combinations for `heads` (ConfigError if one does not fit)."""
        return [parse_weights(c, len(heads)) for c in self.eval_combinations]
