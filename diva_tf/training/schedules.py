"""Learning-rate schedules that change per epoch, as DiVA's MultiStepLR (algorithm.md 5.1), or cosine; the
--scheduler registry that picks one is `diva_tf.training.optimizers.SCHEDULES`.

They read the epoch from an `EpochClock` that `DiVATrainer.fit` sets from Keras's own epoch
counter (and the epoch count from `fit(epochs=...)`), so a schedule always follows the `fit` it
runs in: there is no steps-per-epoch or epoch count to give twice.
"""

from __future__ import annotations

import keras
from keras import ops


class EpochClock:
    """The epoch `fit` is in (`epoch`, 0-based) and the epochs it runs (`epochs`): two int64
    variables (created under the strategy scope of whoever makes the clock) that the schedules
    read inside the train step."""

    def __init__(self):
        self.epoch = keras.Variable(0, dtype="int64", trainable=False, name="epoch")
        self.epochs = keras.Variable(1, dtype="int64", trainable=False, name="epochs")


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate that is a function of the epoch (`at(epoch, epochs)`), read from `clock`
    whatever the optimizer step; without a clock the schedule stays at epoch 0."""

    def __init__(self, base_lr: float, clock: EpochClock | None = None):
        self.base_lr = float(base_lr)
        self.clock = clock

    def at(self, epoch, epochs):
        raise NotImplementedError

    def __call__(self, step):
        if self.clock is None:
            return self.at(ops.convert_to_tensor(0, "int64"), ops.convert_to_tensor(1, "int64"))
        return self.at(ops.convert_to_tensor(self.clock.epoch), ops.convert_to_tensor(self.clock.epochs))


@keras.saving.register_keras_serializable(package="diva_tf")
class EpochStepDecay(EpochSchedule):
    """lr = base * gamma ** (number of milestones <= epoch).

    Constant within an epoch: DiVA steps its scheduler once per epoch, after evaluation.
    """

    def __init__(self, base_lr: float, milestones, gamma: float, clock: EpochClock | None = None):
        super().__init__(base_lr, clock)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)

    def at(self, epoch, epochs):
        epoch = ops.cast(epoch, "int64")
        passed = ops.sum(ops.cast(ops.greater_equal(epoch, ops.convert_to_tensor(self.milestones, "int64")), "float32")) \
            if self.milestones else ops.convert_to_tensor(0.0)
        return self.base_lr * ops.power(self.gamma, passed)

    def get_config(self):
        return {"base_lr": self.base_lr, "milestones": self.milestones, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="diva_tf")
class EpochCosineDecay(EpochSchedule):
    """Linear warm-up over `warmup_epochs`, then cosine to 0 at the last epoch of `fit`, per epoch."""

    def __init__(self, base_lr: float, warmup_epochs: int = 0, clock: EpochClock | None = None):
        super().__init__(base_lr, clock)
        self.warmup_epochs = int(warmup_epochs)

    def at(self, epoch, epochs):
        epoch = ops.cast(epoch, "float32")
        warm = (epoch + 1.0) / max(self.warmup_epochs, 1)
        span = ops.cast(ops.maximum(ops.cast(epochs, "int64") - self.warmup_epochs, 1), "float32")
        progress = ops.clip((epoch - self.warmup_epochs) / span, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(3.141592653589793 * progress))
        return self.base_lr * ops.where(epoch < self.warmup_epochs, warm, cosine)

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_epochs": self.warmup_epochs}
