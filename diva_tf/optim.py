"""DiVA's parameter groups (spec 5.1): one Adam per group, since Keras optimizers have one lr.

network: lr 1e-5 with *coupled* L2 (4e-4 * w added to the gradient before Adam, not AdamW);
betas: lr 5e-4, no decay; regressors: lr 1e-5, no decay; proxies (proxy loss only).
Every group follows the same epoch-wise schedule shape.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from diva_tf.schedules import schedule_from_config

ADAM_EPSILON = 1e-8  # PyTorch's default; Keras's is 1e-7 (spec 10.13)


def make_optimizer(learning_rate, decoupled_decay: float = 0.0,
                   name: str | None = None) -> keras.optimizers.Optimizer:
    if decoupled_decay:
        return keras.optimizers.AdamW(learning_rate, weight_decay=decoupled_decay,
                                      epsilon=ADAM_EPSILON, name=name)
    return keras.optimizers.Adam(learning_rate, epsilon=ADAM_EPSILON, name=name)


def make_optimizers(learning_rates: dict, schedule, network_decoupled_decay: float = 0.0) -> dict:
    """{group: optimizer} for {group: base lr}; `schedule(base_lr)` is a group's lr schedule, and
    the network group alone may use decoupled decay (AdamW)."""
    return {group: make_optimizer(schedule(lr), network_decoupled_decay if group == "network" else 0.0,
                                  group)
            for group, lr in learning_rates.items()}


def optimizers_from_config(cfg, steps_per_epoch: int) -> dict:
    """{'network', 'beta', 'regressor', 'proxy'} -> optimizer, from --lr, --loss_margin_beta_lr,
    --diva_decorrnet_lr, --loss_proxy_lr, --optimizer / --decay and the schedule flags."""
    learning_rates = {"network": cfg.lr, "beta": cfg.loss_margin_beta_lr,
                      "regressor": cfg.diva_decorrnet_lr, "proxy": cfg.loss_proxy_lr}
    return make_optimizers(learning_rates, schedule_from_config(cfg, steps_per_epoch),
                           cfg.decay if cfg.optimizer == "adamw" else 0.0)


def add_coupled_l2(grads, variables, decay: float):
    """g + decay * w: PyTorch Adam's `weight_decay` (L2 in the gradient, then adapted by Adam)."""
    if not decay:
        return list(grads)
    return [None if g is None else g + tf.cast(decay, g.dtype) * tf.cast(v, g.dtype)
            for g, v in zip(grads, variables)]
