"""Learning-rate schedules that change per epoch, as DiVA's MultiStepLR (algorithm.md 5.1), or cosine; the
--scheduler registry that picks one is `diva_tf.training.optimizers.SCHEDULES`."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="diva_tf")
class EpochStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr = base * gamma ** (number of milestones <= epoch), epoch = step // steps_per_epoch.

    Constant within an epoch: DiVA steps its scheduler once per epoch, after evaluation.
    """

    def __init__(self, base_lr: float, steps_per_epoch: int, milestones, gamma: float):
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)

    def __call__(self, step):
        epoch = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch)
        passed = ops.sum(ops.cast(ops.greater_equal(epoch, ops.convert_to_tensor(self.milestones, "int64")), "float32")) \
            if self.milestones else ops.convert_to_tensor(0.0)
        return self.base_lr * ops.power(self.gamma, passed)

    def get_config(self):
        return {"base_lr": self.base_lr, "steps_per_epoch": self.steps_per_epoch,
                "milestones": self.milestones, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="diva_tf")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warmup_epochs`, then cosine to 0 at `total_epochs`, per epoch."""

    def __init__(self, base_lr: float, steps_per_epoch: int, total_epochs: int, warmup_epochs: int = 0):
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_epochs = int(total_epochs)
        self.warmup_epochs = int(warmup_epochs)

    def __call__(self, step):
        epoch = ops.cast(ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch), "float32")
        warm = (epoch + 1.0) / max(self.warmup_epochs, 1)
        span = max(self.total_epochs - self.warmup_epochs, 1)
        progress = ops.clip((epoch - self.warmup_epochs) / span, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(3.141592653589793 * progress))
        return self.base_lr * ops.where(epoch < self.warmup_epochs, warm, cosine)

    def get_config(self):
        return {"base_lr": self.base_lr, "steps_per_epoch": self.steps_per_epoch,
                "total_epochs": self.total_epochs, "warmup_epochs": self.warmup_epochs}
