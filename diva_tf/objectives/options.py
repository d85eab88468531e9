"""The objective option groups (algorithm.md 4): the class margin loss shared by the margin tasks
(`MarginOptions`), the discriminative head's loss (`DiscriminativeOptions`), DaNCE and its key
encoder (`DanceOptions`), decorrelation (`DecorrelationOptions`) and the weight of each task
(`TaskWeights`); `ObjectiveOptions` is their union, what `DiVAObjective` is built from."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from diva_tf.core.errors import ConfigError
from diva_tf.core.options import (COSINE, FRACTION, NON_NEGATIVE, POSITIVE, SPHERE_DISTANCE,
                                  Options, checked, option, require)
from diva_tf.model.options import HEAD_NAMES
from diva_tf.objectives.registry import LOSSES, MINERS, SELF_SUPERVISED_LOSSES


@dataclass
class MarginOptions(Options):
    """The class margin loss with distance-weighted sampling: the discriminative head's (with
    --loss=margin), the shared and intra tasks' and the beyond-DiVA auxiliary ones."""

    loss_margin_margin: float = option(0.2, "Margin alpha of the margin loss.", NON_NEGATIVE)
    loss_margin_beta: float = option(1.2, "Initial per-class beta.", NON_NEGATIVE)
    miner_distance_lower_cutoff: float = option(0.5, "Distance clamp of the distance-weighted "
                                                "miner.", SPHERE_DISTANCE)


@dataclass
class DiscriminativeOptions(Options):
    """Which loss (and, for a triplet loss, which miner) trains the discriminative head, the
    alternatives' hyperparameters, and the modules that register more of them."""

    user_modules: list = option([], "Python modules imported before --loss and --miner are "
                                "looked up: their register_loss / register_miner decorators add "
                                "names (e.g. --user_modules=my_losses --loss=my_loss).")
    loss: str = option("margin", "Discriminative-head loss: " + " | ".join(LOSSES) + " or one "
                       "registered by --user_modules.", choices=(LOSSES, "loss"))
    miner: str = option("distance", "Miner of the triplets a triplet loss (margin, "
                        "triplet_margin) trains on: " + " | ".join(MINERS) + " or one "
                        "registered by --user_modules.", choices=(MINERS, "miner"))
    loss_triplet_margin: float = option(0.2, "triplet loss margin (semi-hard mining).",
                                        NON_NEGATIVE)
    loss_ms_alpha: float = option(2.0, "multi-similarity alpha.", POSITIVE)
    loss_ms_beta: float = option(50.0, "multi-similarity beta.", POSITIVE)
    loss_ms_base: float = option(0.5, "multi-similarity lambda (similarity base).", COSINE)
    loss_ms_epsilon: float = option(0.1, "multi-similarity pair-mining margin.", NON_NEGATIVE)
    loss_proxy_scale: float = option(16.0, "proxy loss (normalized softmax / ArcFace) logit "
                                     "scale.", POSITIVE)
    loss_proxy_margin: float = option(0.0, "proxy loss additive angular margin (0 = normalized "
                                      "softmax).", NON_NEGATIVE)

    def validate(self) -> "DiscriminativeOptions":
        for module in self.user_modules:
            try:
                importlib.import_module(module)
            except Exception as e:  # the user's code: any failure is one line
                raise ConfigError(f"--user_modules: importing {module!r} failed: "
                                  f"{type(e).__name__}: {e}") from None
        checked(self, DiscriminativeOptions)
        require(LOSSES[self.loss].triplets or self.miner == "distance",
                f"--miner={self.miner} needs a triplet loss; --loss={self.loss} mines its own "
                "pairs")
        return self


@dataclass
class DanceOptions(Options):
    """The self-similarity task (algorithm.md 4.5): DaNCE against a queue of keys from a momentum
    encoder."""

    diva_ssl: str = option("fast_moco", "Self-supervised task: fast_moco (DaNCE) | moco.",
                           choices=(SELF_SUPERVISED_LOSSES, "self-supervised task"))
    diva_moco_momentum: float = option(0.9, "Key-encoder momentum (not MoCo's 0.999).", FRACTION)
    diva_moco_temperature: float = option(0.01, "DaNCE temperature (original default 0.1; every sample "
                                          "run uses 0.01, so this tool defaults to 0.01).",
                                          POSITIVE)
    diva_moco_n_key_batches: int = option(50, "Queue size in batches (queue = n x bs).", POSITIVE)
    diva_moco_lower_cutoff: float = option(0.5, "DaNCE distance lower clamp.", SPHERE_DISTANCE)
    diva_moco_upper_cutoff: float = option(1.4, "DaNCE distance upper cutoff.", POSITIVE)
    diva_fixed: bool = option(False, "DaNCE weights normalised per row (issue #3 fix) instead of "
                              "over the batch axis as published.")

    def validate(self) -> "DanceOptions":
        checked(self, DanceOptions)
        require(self.diva_moco_upper_cutoff > self.diva_moco_lower_cutoff,
                f"--diva_moco_upper_cutoff={self.diva_moco_upper_cutoff:g} must be above "
                f"--diva_moco_lower_cutoff={self.diva_moco_lower_cutoff:g}")
        return self


@dataclass
class DecorrelationOptions(Options):
    """Adversarial decorrelation of heads (algorithm.md 4.6): one regressor and one rho per direction."""

    diva_rho_decorrelation: list = option([1500.0, 1500.0, 1500.0],
                                          "One rho per decorrelation direction (error if the count "
                                          "differs; the original silently dropped extras).",
                                          NON_NEGATIVE)
    diva_decorrelations: list = option([], "Explicit decorrelation directions 'source-target' "
                                       "(default: DiVA's rule for the configured heads, algorithm.md "
                                       "4.6).")
    diva_decorrnet_dim: int = option(512, "Hidden size of the decorrelation regressors.", POSITIVE)

    def directions(self, heads) -> list:
        """(source, target) pairs decorrelated by the regressors (algorithm.md 4.6).

        --diva_decorrelations when given; else DiVA's rules: four heads -> each auxiliary head to
        discriminative; (discriminative, selfsimilarity, shared) -> ss->disc, shared->disc,
        shared->ss; any other set -> none.
        """
        if self.diva_decorrelations:
            return [tuple(d.split("-", 1)) for d in self.diva_decorrelations]
        heads = list(heads)
        if set(heads) == set(HEAD_NAMES):
            return [(h, "discriminative") for h in heads if h != "discriminative"]
        if set(heads) == {"discriminative", "selfsimilarity", "shared"}:
            return [("selfsimilarity", "discriminative"), ("shared", "discriminative"),
                    ("shared", "selfsimilarity")]
        return []

    def rhos(self, heads) -> dict:
        """{(source, target): rho} for the configured heads."""
        return dict(zip(self.directions(heads), self.diva_rho_decorrelation))

    def check_heads(self, heads) -> None:
        """ConfigError unless every direction joins two configured heads and each has a rho."""
        for d in self.diva_decorrelations:
            src, _, tgt = d.partition("-")
            require(src in heads and tgt in heads and src != tgt,
                    f"--diva_decorrelations entry {d!r}: expected 'source-target' with two "
                    "configured heads")
        directions = self.directions(heads)
        require(len(self.diva_rho_decorrelation) == len(directions),
                f"--diva_rho_decorrelation has {len(self.diva_rho_decorrelation)} value(s) but "
                f"--diva_features={','.join(heads)} gives {len(directions)} decorrelation "
                f"direction(s) {directions}: give exactly one rho per direction")


@dataclass
class TaskWeights(Options):
    """The weight of each auxiliary task's loss in the sum (algorithm.md 4.7), and of the beyond-DiVA
    class losses on the auxiliary heads and on their concatenation."""

    diva_alpha_ssl: float = option(0.3, "Weight of the DaNCE loss.", NON_NEGATIVE)
    diva_alpha_shared: float = option(0.3, "Weight of the shared-task margin loss.", NON_NEGATIVE)
    diva_alpha_intra: float = option(0.3, "Weight of the intra-class margin loss.", NON_NEGATIVE)
    diva_aux_discriminative: float = option(0.0, "Beyond DiVA: weight of an extra discriminative "
                                            "margin loss (own beta, distance sampling) on each "
                                            "auxiliary head; 0 = published DiVA.", NON_NEGATIVE)
    diva_combined_loss: float = option(0.0, "Beyond DiVA (CGD-style): weight of a class margin "
                                       "loss (own beta, distance sampling) on the concatenation "
                                       "of all heads, L2-normalised (the equal-weight test-time "
                                       "embedding); 0 = published DiVA.", NON_NEGATIVE)


@dataclass
class ObjectiveOptions(TaskWeights, DecorrelationOptions, DanceOptions, DiscriminativeOptions,
                       MarginOptions):
    """Every option of the DiVA objective (the five groups above)."""

    def validate(self) -> "ObjectiveOptions":
        for group in (DiscriminativeOptions, MarginOptions, DanceOptions, DecorrelationOptions,
                      TaskWeights):
            group.validate(self)
        return self

    def check_heads(self, heads) -> None:
        """The checks that depend on the configured heads (ConfigError)."""
        heads = list(heads)
        require(self.diva_combined_loss == 0 or len(heads) > 1,
                "--diva_combined_loss needs at least two heads in --diva_features")
        DecorrelationOptions.check_heads(self, heads)
