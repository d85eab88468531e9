"""The training option groups: the optimisers and their schedule (`OptimizerOptions`, algorithm.md 5.1)
and the run (`RunOptions`: epochs, seed, run folder, evaluation cadence, checkpoints, distribution,
compilation, precision)."""

from __future__ import annotations

from dataclasses import dataclass

from diva_tf.core.options import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, SEED, Options, Range,
                                  check_choices, check_ranges, option, require)
from diva_tf.training.distribute import STRATEGIES
from diva_tf.training.optimizers import OPTIMIZERS, SCHEDULES


@dataclass
class OptimizerOptions(Options):
    """One optimizer per parameter group (network, [heads,] betas, regressors, proxies), each with
    its learning rate, all following the same epoch-wise schedule."""

    optimizer: str = option("adam", "adam (coupled L2, as DiVA) | adamw (decoupled decay) | "
                            "adam_torch (adam with torch's epsilon placement, for step-exact "
                            "comparison with the original code).",
                            choices=(OPTIMIZERS, "optimizer"))
    lr: float = option(1e-5, "Network learning rate.", POSITIVE)
    fc_lr: float = option(-1.0, "Learning rate of the embedding heads (same optimizer and weight "
                          "decay as the network, own schedule-shaped lr); -1 = the heads share "
                          "--lr, as DiVA.", Range(0, low_open=True, also=(-1,)))
    decay: float = option(4e-4, "Weight decay of the network variables (coupled L2 for adam).",
                          NON_NEGATIVE)
    loss_margin_beta_lr: float = option(5e-4, "Learning rate of the beta vectors (no weight "
                                        "decay).", POSITIVE)
    diva_decorrnet_lr: float = option(1e-5, "Regressor learning rate (no weight decay).", POSITIVE)
    loss_proxy_lr: float = option(1e-3, "proxy loss learning rate of the proxies.", POSITIVE)
    scheduler: str = option("step", " | ".join(SCHEDULES), choices=(SCHEDULES, "schedule"))
    tau: list = option([10000], "Step-decay milestones in epochs.", POSITIVE)
    gamma: float = option(0.3, "Step-decay factor.", POSITIVE)
    warmup_epochs: int = option(0, "cosine: linear warm-up epochs.", NON_NEGATIVE)

    def validate(self) -> "OptimizerOptions":
        check_choices(self, OptimizerOptions)
        require(self.fc_lr == -1 or self.fc_lr > 0,
                f"--fc_lr={self.fc_lr}: expected -1 (share --lr) or > 0")
        check_ranges(self, OptimizerOptions)
        return self

    @property
    def learning_rates(self) -> dict:
        """{parameter group: base learning rate}; 'heads' only with --fc_lr > 0."""
        rates = {"network": self.lr, "beta": self.loss_margin_beta_lr,
                 "regressor": self.diva_decorrnet_lr, "proxy": self.loss_proxy_lr}
        if self.fc_lr > 0:
            rates["heads"] = self.fc_lr
        return rates


@dataclass
class RunOptions(Options):
    """How long and where a run trains, and how it is evaluated, saved and distributed."""

    n_epochs: int = option(150, "Training epochs.", POSITIVE)
    steps_per_epoch: int = option(0, "0 = floor(N_train / bs) as DiVA; >0 overrides (quick runs).",
                                  NON_NEGATIVE)
    seed: int = option(1, "Seed of sampler, augmentation, init and miners.", SEED)
    workdir: str = option("runs/default", "Output folder: flags, logs, TensorBoard, checkpoints.")
    eval_every: int = option(1, "Evaluate every N epochs (0 = only at the end), on the validation "
                             "classes when --val_classes_fraction > 0, else on the test classes.",
                             NON_NEGATIVE)
    keep_checkpoints: int = option(3, "Checkpoints kept by the CheckpointManager.", AT_LEAST_ONE)
    strategy: str = option("auto", " | ".join(STRATEGIES) + " (auto: MultiWorker if TF_CONFIG "
                           "names several workers, else Mirrored).",
                           choices=(STRATEGIES, "strategy"))
    jit_compile: bool = option(False, "XLA-compile the train step.")
    mixed_precision: bool = option(False, "mixed_bfloat16 compute; losses stay float32.")
