"""DiVA's training objectives (algorithm.md 4) and alternative discriminative losses: pure tensor functions.

`diva_tf.objectives.registry` names them for --loss and --diva_ssl. The loss functions are
loaded on first use, so the registry (and `ObjectiveOptions`, which validates against it) does not
pay for importing TensorFlow.
"""

import importlib

_MODULE_OF = {
    "dance_logits": "dance",
    "dance_loss": "dance",
    "dance_row_losses": "dance",
    "dance_weights": "dance",
    "build_regressor": "decorrelation",
    "correlation": "decorrelation",
    "decorrelation_loss": "decorrelation",
    "directions_loss": "decorrelation",
    "margin_loss": "margin",
    "multi_similarity_loss": "multisimilarity",
    "proxy_initializer": "proxy",
    "proxy_softmax_loss": "proxy",
    "triplet_margin_loss": "triplet",
    "triplet_semihard_loss": "triplet",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
