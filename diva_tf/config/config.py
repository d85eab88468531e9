"""The one place where flags become a config.

`Config` lists every hyperparameter with the default of `diva_spec.md` section 6 (where the tool
deviates, the field's help says so). `diva_tf.config.flags` turns these fields into absl flags, so a flag
and its config field cannot drift apart. Every numeric field declares the `Range` it accepts (a
numeric field without one fails at import), and `Config.validate` checks them all, NaN and inf
refused, with the other inconsistent settings before any data is read. The choices of --dataset,
--data_sampler, --backbone, --head_pooling, --loss, --diva_ssl, --optimizer, --scheduler and
--strategy are the keys of the registries in the modules that build them (`diva_tf.data.DATASETS`, `diva_tf.data.SAMPLERS`, `diva_tf.model.backbones.BACKBONES`,
`diva_tf.model.pooling.POOLINGS`, `diva_tf.objectives.losses.DISCRIMINATIVE_LOSSES` / `SELF_SUPERVISED_LOSSES`,
`diva_tf.training.optimizers.OPTIMIZERS` / `SCHEDULES`, `diva_tf.training.distribute.STRATEGIES`); none imports
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from diva_tf.model.backbones.registry import BACKBONES, BackboneError, weights_source
from diva_tf.core.choices import lookup
from diva_tf.core.errors import ConfigError
from diva_tf.data.datasets import DATASETS
from diva_tf.data.errors import DataError
from diva_tf.data.sampler import SAMPLERS, Sampler
from diva_tf.training.distribute import STRATEGIES
from diva_tf.objectives.losses.registry import DISCRIMINATIVE_LOSSES, SELF_SUPERVISED_LOSSES
from diva_tf.training.optimizers import OPTIMIZERS, SCHEDULES
from diva_tf.model.pooling import POOLINGS

HEAD_NAMES = ("discriminative", "selfsimilarity", "shared", "intra")
EVAL_TEST = ("always", "val_improved")

# Test-time head weights behind the published numbers (spec 2.4), in HEAD_NAMES order.
DEFAULT_HEAD_WEIGHTS = {
    "cub200": (0.5, 1.0, 1.0, 1.0),
    "cars196": (0.5, 2.0, 2.0, 2.0),
    "sop": (1.0, 1.0, 1.0, 1.0),
}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _show(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts; NaN and inf never are (`Config.validate` checks every
    field that declares one, and every element of a list field)."""
    low: float
    high: float | None = None
    low_open: bool = False   # low itself is excluded
    high_open: bool = False  # high itself is excluded
    also: tuple = ()         # values accepted outside the range (e.g. -1 = share --lr)

    def __contains__(self, v) -> bool:
        if not _is_number(v):
            return False
        if v in self.also:
            return True
        if not math.isfinite(v):
            return False
        above = self.low is None or (v > self.low if self.low_open else v >= self.low)
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            text = f"{'>' if self.low_open else '>='} {_show(self.low)}"
        else:
            text = (f"in {'(' if self.low_open else '['}{_show(self.low)}, {_show(self.high)}"
                    f"{')' if self.high_open else ']'}")
        return " or ".join([*map(_show, self.also), text])


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)          # [0, 1): momenta, held-out fractions
SPHERE_DISTANCE = Range(0, 2, True, True)       # distance clamps between unit vectors
COSINE = Range(-1, 1)
SEED = Range(0, 2 ** 32 - 1)                    # numpy's seed range


def _f(default, help_text, allowed: Range | None = None, **kw):
    """A config field carrying its flag help text and, for numbers, the range `validate` checks."""
    items = default if isinstance(default, (list, tuple)) else [default]
    if allowed is None and items and all(_is_number(v) for v in items):
        raise TypeError(f"numeric config field ({help_text!r}) needs an allowed Range")
    meta = {"help": help_text, "range": allowed, **kw}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # ---- data -----------------------------------------------------------------------------
    dataset: str = _f("emoji", " | ".join(DATASETS))
    data_dir: str = _f("", "Dataset folder (official layout), or the prepared emoji folder.")
    tfds_data_dir: str = _f("", "tensorflow-datasets data_dir holding caltech_birds2011 / cars196 / "
                            "stanford_online_products (used when set).")
    train_classes: list = _f([], "folder dataset: explicit training class names (default: first "
                             "half of the sorted class folders).")
    test_classes: list = _f([], "folder dataset: explicit test class names (default: the rest).")
    val_classes_fraction: float = _f(0.0, "Fraction of the training classes held out as a "
                                     "validation split (class-disjoint, Reality-Check style); "
                                     "0 = none.", FRACTION)
    resize: int = _f(256, "Test-time resize of the shorter side (spec 3.3).", POSITIVE)
    crop: int = _f(224, "Crop size for training views and test centre crop.", POSITIVE)
    cache_images: bool = _f(True, "Cache decoded images in memory when they fit.")
    realistic_augmentation: bool = _f(False, "Key-encoder view through the colour pipeline "
                                      "(crop, grayscale p 0.2, colour jitter 0.4, flip; spec 3.3); "
                                      "off in every sample run.")
    realistic_main_augmentation: bool = _f(False, "Main view (every loss) through the colour "
                                           "pipeline too (spec 3.3); off in every sample run.")
    # ---- sampler --------------------------------------------------------------------------
    bs: int = _f(112, "Global batch size B = classes-per-batch x samples_per_class.", POSITIVE)
    samples_per_class: int = _f(2, "Images drawn per class draw.", POSITIVE)
    data_sampler: str = _f("class_random", " | ".join(SAMPLERS))
    # ---- model ----------------------------------------------------------------------------
    backbone: str = _f("resnet50", " | ".join(BACKBONES))
    backbone_weights: str = _f("imagenet", "'imagenet', 'none', or a path to a weights file.")
    frozen_bn: bool = _f(True, "Freeze BN statistics (gamma/beta stay trainable), spec 2.1.")
    embed_dim: int = _f(128, "Dimension of each head (unless --head_dims).", POSITIVE)
    head_dims: list = _f([], "Dimension per head, in --diva_features order (default --embed_dim for "
                         "every head; beyond DiVA: e.g. 256,128,64,64 keeps the 512-d total but "
                         "gives the discriminative head more).", POSITIVE)
    diva_features: list = _f(list(HEAD_NAMES), "Heads to build, in order (1 to 4 of "
                             + ", ".join(HEAD_NAMES) + "). Spec default is discriminative only; "
                             "this tool defaults to DiVA's four.")
    head_pooling: list = _f([], "Global pooling per head, in --diva_features order, or one value for "
                            "all: " + " | ".join(POOLINGS) + " (default avg, as DiVA; max/gem give "
                            "CGD-style multiple global descriptors).")
    gem_p: float = _f(3.0, "Exponent p of generalized-mean (gem) pooling.", POSITIVE)
    # ---- objectives -----------------------------------------------------------------------
    loss: str = _f("margin", "Discriminative-head loss: " + " | ".join(DISCRIMINATIVE_LOSSES))
    loss_margin_margin: float = _f(0.2, "Margin alpha of the margin loss.", NON_NEGATIVE)
    loss_margin_beta: float = _f(1.2, "Initial per-class beta.", NON_NEGATIVE)
    loss_margin_beta_lr: float = _f(5e-4, "Learning rate of the beta vectors (no weight decay).",
                                    POSITIVE)
    miner_distance_lower_cutoff: float = _f(0.5, "Distance clamp of the distance-weighted miner.",
                                            SPHERE_DISTANCE)
    loss_triplet_margin: float = _f(0.2, "triplet loss margin (semi-hard mining).", NON_NEGATIVE)
    loss_ms_alpha: float = _f(2.0, "multi-similarity alpha.", POSITIVE)
    loss_ms_beta: float = _f(50.0, "multi-similarity beta.", POSITIVE)
    loss_ms_base: float = _f(0.5, "multi-similarity lambda (similarity base).", COSINE)
    loss_ms_epsilon: float = _f(0.1, "multi-similarity pair-mining margin.", NON_NEGATIVE)
    loss_proxy_scale: float = _f(16.0, "proxy loss (normalized softmax / ArcFace) logit scale.",
                                 POSITIVE)
    loss_proxy_margin: float = _f(0.0, "proxy loss additive angular margin (0 = normalized "
                                  "softmax).", NON_NEGATIVE)
    loss_proxy_lr: float = _f(1e-3, "proxy loss learning rate of the proxies.", POSITIVE)
    diva_ssl: str = _f("fast_moco", "Self-supervised task: fast_moco (DaNCE) | moco.")
    diva_alpha_ssl: float = _f(0.3, "Weight of the DaNCE loss.", NON_NEGATIVE)
    diva_alpha_shared: float = _f(0.3, "Weight of the shared-task margin loss.", NON_NEGATIVE)
    diva_alpha_intra: float = _f(0.3, "Weight of the intra-class margin loss.", NON_NEGATIVE)
    diva_rho_decorrelation: list = _f([1500.0, 1500.0, 1500.0],
                                      "One rho per decorrelation direction (error if the count "
                                      "differs; the original silently dropped extras).",
                                      NON_NEGATIVE)
    diva_decorrelations: list = _f([], "Explicit decorrelation directions 'source-target' (default: "
                                   "DiVA's rule for the configured heads, spec 4.6).")
    diva_decorrnet_dim: int = _f(512, "Hidden size of the decorrelation regressors.", POSITIVE)
    diva_decorrnet_lr: float = _f(1e-5, "Regressor learning rate (no weight decay).", POSITIVE)
    diva_moco_momentum: float = _f(0.9, "Key-encoder momentum (not MoCo's 0.999).", FRACTION)
    diva_moco_temperature: float = _f(0.01, "DaNCE temperature (spec default 0.1; every sample run "
                                      "uses 0.01, so this tool defaults to 0.01).", POSITIVE)
    diva_moco_n_key_batches: int = _f(50, "Queue size in batches (queue = n x bs).", POSITIVE)
    diva_moco_lower_cutoff: float = _f(0.5, "DaNCE distance lower clamp.", SPHERE_DISTANCE)
    diva_moco_upper_cutoff: float = _f(1.4, "DaNCE distance upper cutoff.", POSITIVE)
    diva_fixed: bool = _f(False, "DaNCE weights normalised per row (issue #3 fix) instead of over "
                          "the batch axis as published.")
    diva_aux_discriminative: float = _f(0.0, "Beyond DiVA: weight of an extra discriminative margin "
                                        "loss (own beta, distance sampling) on each auxiliary head; "
                                        "0 = published DiVA.", NON_NEGATIVE)
    diva_combined_loss: float = _f(0.0, "Beyond DiVA (CGD-style): weight of a class margin loss "
                                   "(own beta, distance sampling) on the concatenation of all "
                                   "heads, L2-normalised (the equal-weight test-time embedding); "
                                   "0 = published DiVA.", NON_NEGATIVE)
    # ---- optimisation ---------------------------------------------------------------------
    optimizer: str = _f("adam", "adam (coupled L2, as DiVA) | adamw (decoupled decay).")
    lr: float = _f(1e-5, "Network learning rate.", POSITIVE)
    fc_lr: float = _f(-1.0, "Learning rate of the embedding heads (same optimizer and weight decay "
                      "as the network, own schedule-shaped lr); -1 = the heads share --lr, as DiVA.",
                      Range(0, low_open=True, also=(-1,)))
    decay: float = _f(4e-4, "Weight decay of the network variables (coupled L2 for adam).",
                      NON_NEGATIVE)
    scheduler: str = _f("step", " | ".join(SCHEDULES))
    tau: list = _f([10000], "Step-decay milestones in epochs.", POSITIVE)
    gamma: float = _f(0.3, "Step-decay factor.", POSITIVE)
    warmup_epochs: int = _f(0, "cosine: linear warm-up epochs.", NON_NEGATIVE)
    n_epochs: int = _f(150, "Training epochs.", POSITIVE)
    steps_per_epoch: int = _f(0, "0 = floor(N_train / bs) as DiVA; >0 overrides (quick runs).",
                              NON_NEGATIVE)
    seed: int = _f(1, "Seed of sampler, augmentation, init and miners.", SEED)
    # ---- run ------------------------------------------------------------------------------
    workdir: str = _f("runs/default", "Output folder: flags, logs, TensorBoard, checkpoints.")
    eval_every: int = _f(1, "Evaluate on the test split every N epochs (0 = only at the end).",
                         NON_NEGATIVE)
    eval_batch_size: int = _f(128, "Batch size for embedding the evaluation splits.", POSITIVE)
    eval_combinations: list = _f([], "Head-weight combinations to evaluate, e.g. "
                                 "'0.5,1,1,1' (default: the dataset's published weights).")
    eval_test: str = _f("always", "always: evaluate the test split at every evaluation | "
                        "val_improved: with a validation split, only when some embedding's "
                        "validation R@1 improves, and at the last epoch (what a validation-based "
                        "selection needs, for less compute).")
    recall_k: list = _f([], "Recall@k values (default 1,2,4,8; SOP 1,10,100,1000).", POSITIVE)
    keep_checkpoints: int = _f(3, "Checkpoints kept by the CheckpointManager.", AT_LEAST_ONE)
    strategy: str = _f("auto", " | ".join(STRATEGIES) + " (auto: MultiWorker if TF_CONFIG names "
                       "several workers, else Mirrored).")
    jit_compile: bool = _f(False, "XLA-compile the train step.")
    mixed_precision: bool = _f(False, "mixed_bfloat16 compute; losses stay float32.")
    max_images: int = _f(0, "Debug: cap the images per split (0 = all).", NON_NEGATIVE)

    # ------------------------------------------------------------------------------------
    @property
    def head_weights(self) -> tuple:
        """Default test-time weights for the configured heads (spec 2.4)."""
        full = DEFAULT_HEAD_WEIGHTS.get(self.dataset, (1.0,) * len(HEAD_NAMES))
        return tuple(full[HEAD_NAMES.index(h)] for h in self.diva_features)

    @property
    def poolings(self) -> tuple:
        """Pooling of each configured head (avg unless --head_pooling says otherwise)."""
        if not self.head_pooling:
            return ("avg",) * len(self.diva_features)
        if len(self.head_pooling) == 1:
            return tuple(self.head_pooling) * len(self.diva_features)
        return tuple(self.head_pooling)

    @property
    def dims(self) -> dict:
        """Head name -> its embedding dimension (--head_dims, else --embed_dim)."""
        sizes = self.head_dims or [self.embed_dim] * len(self.diva_features)
        return {h: int(d) for h, d in zip(self.diva_features, sizes)}

    @property
    def decorrelation_directions(self) -> list:
        """(source, target) pairs decorrelated by the regressors (spec 4.6).

        --diva_decorrelations when given; else DiVA's rules: four heads -> each auxiliary head to
        discriminative; (discriminative, selfsimilarity, shared) -> ss->disc, shared->disc,
        shared->ss; any other set -> none.
        """
        if self.diva_decorrelations:
            return [tuple(d.split("-", 1)) for d in self.diva_decorrelations]
        feats = set(self.diva_features)
        if feats == set(HEAD_NAMES):
            return [(h, "discriminative") for h in self.diva_features if h != "discriminative"]
        if feats == {"discriminative", "selfsimilarity", "shared"}:
            return [("selfsimilarity", "discriminative"), ("shared", "discriminative"),
                    ("shared", "selfsimilarity")]
        return []

    def validate(self) -> "Config":
        """Raise ConfigError naming the offending flag; returns self."""
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)

        lookup(BACKBONES, "backbone", self.backbone, "backbone", ConfigError)
        lookup(DISCRIMINATIVE_LOSSES, "loss", self.loss, "loss", ConfigError)
        lookup(OPTIMIZERS, "optimizer", self.optimizer, "optimizer", ConfigError)
        lookup(SCHEDULES, "scheduler", self.scheduler, "schedule", ConfigError)
        lookup(STRATEGIES, "strategy", self.strategy, "strategy", ConfigError)
        lookup(SELF_SUPERVISED_LOSSES, "diva_ssl", self.diva_ssl, "self-supervised task", ConfigError)
        lookup(DATASETS, "dataset", self.dataset, "dataset", ConfigError)
        feats = list(self.diva_features)
        need(1 <= len(feats) <= 4 and len(set(feats)) == len(feats)
             and all(f in HEAD_NAMES for f in feats),
             f"--diva_features={','.join(feats)}: 1 to 4 distinct names out of {HEAD_NAMES}")
        need(len(self.head_dims) in (0, len(feats)) and all(int(d) > 0 for d in self.head_dims),
             f"--head_dims={','.join(map(str, self.head_dims))}: one positive dimension per head "
             f"({len(feats)}: {','.join(feats)})")
        need(self.fc_lr == -1 or self.fc_lr > 0, f"--fc_lr={self.fc_lr}: expected -1 (share --lr) or > 0")
        self._check_ranges()
        try:  # --data_sampler, --bs, --samples_per_class: the sampler checks its own setting
            Sampler.from_config(self)
        except DataError as e:
            raise ConfigError(str(e)) from None
        need(len(self.head_pooling) in (0, 1, len(feats))
             and all(p in POOLINGS for p in self.head_pooling),
             f"--head_pooling={','.join(self.head_pooling)}: one value or one per head "
             f"({len(feats)}) out of {', '.join(POOLINGS)}")
        need(self.diva_combined_loss == 0 or len(feats) > 1,
             "--diva_combined_loss needs at least two heads in --diva_features")
        need(self.samples_per_class >= 2 or feats == ["selfsimilarity"],
             "--samples_per_class must be >= 2: the margin losses need a positive per anchor")
        for d in self.diva_decorrelations:
            src, _, tgt = d.partition("-")
            need(src in feats and tgt in feats and src != tgt,
                 f"--diva_decorrelations entry {d!r}: expected 'source-target' with two configured heads")
        n_dir = len(self.decorrelation_directions)
        need(len(self.diva_rho_decorrelation) == n_dir,
             f"--diva_rho_decorrelation has {len(self.diva_rho_decorrelation)} value(s) but "
             f"--diva_features={','.join(feats)} gives {n_dir} decorrelation direction(s) "
             f"{self.decorrelation_directions}: give exactly one rho per direction")
        need(self.resize >= self.crop, f"--resize={self.resize} must be >= --crop={self.crop}")
        need(self.diva_moco_upper_cutoff > self.diva_moco_lower_cutoff,
             f"--diva_moco_upper_cutoff={self.diva_moco_upper_cutoff:g} must be above "
             f"--diva_moco_lower_cutoff={self.diva_moco_lower_cutoff:g}")
        for combo in self.eval_combinations:
            parse_weights(combo, len(feats))
        need(self.eval_test in EVAL_TEST, f"--eval_test={self.eval_test!r}: choose one of {', '.join(EVAL_TEST)}")
        try:
            weights_source(self.backbone_weights)
        except BackboneError as e:
            raise ConfigError(str(e)) from None
        return self

    def _check_ranges(self) -> None:
        """Every field that declares a Range (each element of a list field) must lie in it."""
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("range")
            value = getattr(self, f.name)
            if allowed is None:
                continue
            if not isinstance(value, list) and value not in allowed:
                raise ConfigError(f"--{f.name} must be {allowed} (got {value})")
            if isinstance(value, list) and not all(v in allowed for v in value):
                raise ConfigError(f"--{f.name}={','.join(map(str, value))}: every value must be "
                                  f"{allowed}")

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
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
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def replace(self, **kw) -> "Config":
        return dataclasses.replace(self, **kw)


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
