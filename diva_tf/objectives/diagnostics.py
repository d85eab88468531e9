"""Per-step training diagnostics (no gradient): what each auxiliary task is doing.

Logged next to the loss terms (metrics.jsonl, TensorBoard) so that a run shows whether DaNCE still
learns (its positive logit against the weighted negatives, and how often its loss is ~0) and how
strongly the decorrelation regressors still find correlation (C of algorithm.md 4.6, before rho).
"""

from __future__ import annotations

import tensorflow as tf

from diva_tf.objectives import losses

# A DaNCE row whose cross-entropy is below this has (numerically) nothing left to learn.
DANCE_ZERO_LOSS = 1e-3


DANCE_STATISTICS = ("dance_positive_logit", "dance_negative_logit", "dance_max_negative_logit",
                    "dance_zero_loss_fraction")


CORRELATION_PREFIX = "correlation_"


def correlation_name(source: str, target: str) -> str:
    return f"{CORRELATION_PREFIX}{source}_{target}"


def is_statistic(name: str) -> bool:
    """A logged diagnostic of this module, not a loss term."""
    return name in DANCE_STATISTICS or name.startswith(CORRELATION_PREFIX)


def dance_statistics(queries, keys, queue, temperature, lower_cutoff, upper_cutoff, fixed, weighted):
    """{name: scalar}: mean positive logit, mean and mean-of-row-max weighted negative logit (all
    divided by the temperature, as the loss sees them) and the fraction of rows with loss < 1e-3."""
    logits = losses.dance_logits(queries, keys, queue, temperature, lower_cutoff, upper_cutoff,
                                 fixed, weighted)
    rows = losses.dance_row_losses(logits)
    return {
        "dance_positive_logit": tf.reduce_mean(logits[:, 0]),
        "dance_negative_logit": tf.reduce_mean(logits[:, 1:]),
        "dance_max_negative_logit": tf.reduce_mean(tf.reduce_max(logits[:, 1:], axis=-1)),
        "dance_zero_loss_fraction": tf.reduce_mean(tf.cast(rows < DANCE_ZERO_LOSS, tf.float32)),
    }


def decorrelation_statistics(embeddings, regressors):
    """{"correlation_<src>_<tgt>": C} for each regressor keyed by (source, target)."""
    return {correlation_name(src, tgt): losses.correlation(embeddings[src], embeddings[tgt], reg)
            for (src, tgt), reg in regressors.items()}
