"""DiVA's parameter groups (algorithm.md 5.1), one Adam per group since Keras optimizers have one lr; and
the registries of --optimizer and --scheduler (adam_torch: Adam with torch's epsilon placement,
for step-exact comparisons with the original code).

network: lr 1e-5 with *coupled* L2 (4e-4 * w added to the gradient before Adam, not AdamW);
heads (only with --fc_lr > 0): the network's optimizer and decay at their own lr; betas: lr 5e-4, no
decay; regressors: lr 1e-5, no decay; proxies (proxy loss only).
Every group follows the same epoch-wise schedule shape. TensorFlow is imported only when an
optimizer or a schedule is built, so the options (`options.OptimizerOptions`) validate names
without loading it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from diva_tf.training.options import OptimizerOptions

ADAM_EPSILON = 1e-8  # PyTorch's default; Keras's is 1e-7 (algorithm.md 5.1)


@dataclass(frozen=True)
class OptimizerSpec:
    build: Callable  # (learning_rate, decay, name) -> keras optimizer
    coupled_decay: bool  # the trainer adds decay * w to the network's gradients (DiVA's L2)
    undecayed: str = "adam"  # the OPTIMIZERS entry of the groups without weight decay


def _adam(learning_rate, decay, name):
    import keras
    return keras.optimizers.Adam(learning_rate, epsilon=ADAM_EPSILON, name=name)


def _adamw(learning_rate, decay, name):
    import keras
    return keras.optimizers.AdamW(learning_rate, weight_decay=decay, epsilon=ADAM_EPSILON, name=name)


@functools.cache
def _torch_adam_class():
    import keras
    from keras import ops

    class TorchAdam(keras.optimizers.Adam):
        """Adam with torch.optim.Adam's epsilon placement: lr * m_hat / (sqrt(v_hat) + eps).

        Keras adds eps to the uncorrected sqrt(v), i.e. an effective eps of
        eps / sqrt(1 - beta_2^t) (3.2e-7 at the first step for eps 1e-8): with small gradients
        (lr 1e-4 and DiVA's heads) the first updates differ measurably (benchmarks/parity).
        """

        def update_step(self, gradient, variable, learning_rate):
            dtype = variable.dtype
            lr = ops.cast(learning_rate, dtype)
            gradient = ops.cast(gradient, dtype)
            step = ops.cast(self.iterations + 1, dtype)
            # convert_to_tensor, not cast: ops.cast(0.999, "float64") rounds through float32
            correction_1 = 1 - ops.power(ops.convert_to_tensor(self.beta_1, dtype), step)
            correction_2 = 1 - ops.power(ops.convert_to_tensor(self.beta_2, dtype), step)
            m = self._momentums[self._get_variable_index(variable)]
            v = self._velocities[self._get_variable_index(variable)]
            self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
            self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
            denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(correction_2)), self.epsilon)
            self.assign_sub(variable, ops.divide(ops.multiply(m, lr / correction_1), denominator))

    return TorchAdam


def _adam_torch(learning_rate, decay, name):
    return _torch_adam_class()(learning_rate, epsilon=ADAM_EPSILON, name=name)


OPTIMIZERS = {"adam": OptimizerSpec(_adam, coupled_decay=True),
              "adamw": OptimizerSpec(_adamw, coupled_decay=False),
              "adam_torch": OptimizerSpec(_adam_torch, coupled_decay=True, undecayed="adam_torch")}


def _step(base_lr, clock, *, milestones, gamma, warmup_epochs):
    from diva_tf.training.schedules import EpochStepDecay
    return EpochStepDecay(base_lr, milestones, gamma, clock)


def _cosine(base_lr, clock, *, milestones, gamma, warmup_epochs):
    from diva_tf.training.schedules import EpochCosineDecay
    return EpochCosineDecay(base_lr, warmup_epochs, clock)


SCHEDULES = {"step": _step, "cosine": _cosine}


def schedule_of(options: "OptimizerOptions", clock=None):
    """base_lr -> schedule of the shape `options` give (--scheduler, --tau, --gamma,
    --warmup_epochs), shared by every parameter group; `clock` (`schedules.EpochClock`) is the
    epoch and epoch count of the `fit` it follows (cosine ends at that fit's last epoch)."""
    return functools.partial(SCHEDULES[options.scheduler], clock=clock, milestones=options.tau,
                             gamma=options.gamma, warmup_epochs=options.warmup_epochs)


DECAYED_GROUPS = ("network", "heads")


def make_optimizers(learning_rates: dict, schedule, optimizer: str = "adam", decay: float = 0.0) -> dict:
    """{group: optimizer} for {group: base lr}; `schedule(base_lr)` is a group's lr schedule. The
    DECAYED_GROUPS use `optimizer` (an OPTIMIZERS name) with `decay`; the others its `undecayed`
    optimizer (plain Adam, or torch-exact Adam for adam_torch) without decay."""
    def build(group, lr):
        if group in DECAYED_GROUPS:
            return OPTIMIZERS[optimizer].build(schedule(lr), decay, group)
        return OPTIMIZERS[OPTIMIZERS[optimizer].undecayed].build(schedule(lr), 0.0, group)
    return {group: build(group, lr) for group, lr in learning_rates.items()}


def optimizers_of(options: "OptimizerOptions", clock=None) -> dict:
    """{'network', ['heads',] 'beta', 'regressor', 'proxy'} -> optimizer, from the learning
    rates of `OptimizerOptions`, its --optimizer / --decay and its schedule (following `clock`)."""
    return make_optimizers(options.learning_rates, schedule_of(options, clock),
                           options.optimizer, options.decay)


def add_coupled_l2(grads, variables, decay: float):
    """g + decay * w: PyTorch Adam's `weight_decay` (L2 in the gradient, then adapted by Adam)."""
    import tensorflow as tf

    if not decay:
        return list(grads)
    return [None if g is None else g + tf.cast(decay, g.dtype) * tf.cast(v, g.dtype)
            for g, v in zip(grads, variables)]
