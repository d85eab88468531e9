"""DiVA's parameter groups (spec 5.1): one Adam per group, since Keras optimizers have one lr.

network: lr 1e-5 with *coupled* L2 (4e-4 * w added to the gradient before Adam, not AdamW);
betas: lr 5e-4, no decay; regressors: lr 1e-5, no decay; proxies (proxy loss only).
Every group follows the same epoch-wise schedule shape.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from diva_tf.config import Config
from diva_tf.schedules import make_schedule

ADAM_EPSILON = 1e-8  # PyTorch's default; Keras's is 1e-7 (spec 10.13)


def make_optimizer(cfg: Config, base_lr: float, steps_per_epoch: int, decoupled_decay: float = 0.0,
                   name: str | None = None) -> keras.optimizers.Optimizer:
    lr = make_schedule(cfg, base_lr, steps_per_epoch)
    if decoupled_decay:
        return keras.optimizers.AdamW(lr, weight_decay=decoupled_decay, epsilon=ADAM_EPSILON, name=name)
    return keras.optimizers.Adam(lr, epsilon=ADAM_EPSILON, name=name)


def make_optimizers(cfg: Config, steps_per_epoch: int) -> dict:
    """{'network', 'beta', 'regressor', 'proxy'} -> optimizer."""
    adamw = cfg.optimizer == "adamw"
    return {
        "network": make_optimizer(cfg, cfg.lr, steps_per_epoch, cfg.decay if adamw else 0.0, "network"),
        "beta": make_optimizer(cfg, cfg.loss_margin_beta_lr, steps_per_epoch, name="beta"),
        "regressor": make_optimizer(cfg, cfg.diva_decorrnet_lr, steps_per_epoch, name="regressor"),
        "proxy": make_optimizer(cfg, cfg.loss_proxy_lr, steps_per_epoch, name="proxy"),
    }


def add_coupled_l2(grads, variables, decay: float):
    """g + decay * w: PyTorch Adam's `weight_decay` (L2 in the gradient, then adapted by Adam)."""
    if not decay:
        return list(grads)
    return [None if g is None else g + tf.cast(decay, g.dtype) * tf.cast(v, g.dtype)
            for g, v in zip(grads, variables)]
