"""The DiVA training objective (spec 4.7) and the parameters it owns: three beta vectors, the
decorrelation regressors and, for the proxy loss, the class proxies.

Pure loss functions live in `diva_tf.losses` and miners in `diva_tf.miners`; this layer only picks
which apply to the configured heads and sums them with their weights.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from diva_tf import diagnostics, losses, miners
from diva_tf.config import Config

MARGIN_TASKS = ("discriminative", "shared", "intra")


class DiVAObjective(keras.layers.Layer):
    """(embeddings per head, labels, seed, keys, queue) -> (total loss, {term: value})."""

    def __init__(self, cfg: Config, num_classes: int, **kwargs):
        super().__init__(name="objective", dtype="float32", **kwargs)
        self.cfg = cfg
        self.num_classes = int(num_classes)
        heads = cfg.diva_features
        self.margin_tasks = [t for t in MARGIN_TASKS
                             if t in heads and (t != "discriminative" or cfg.loss == "margin")]
        # Beyond DiVA (--diva_aux_discriminative > 0): a class margin loss on each auxiliary head.
        self.aux_disc_tasks = [f"{h}_disc" for h in heads
                               if h != "discriminative" and cfg.diva_aux_discriminative > 0]
        self.betas = {
            t: self.add_weight(name=f"beta_{t}", shape=(self.num_classes,),
                               initializer=keras.initializers.Constant(cfg.loss_margin_beta))
            for t in self.margin_tasks + self.aux_disc_tasks
        }
        self.directions = cfg.decorrelation_directions
        self.rhos = dict(zip(self.directions, cfg.diva_rho_decorrelation))
        self.regressors = {
            f"{src}-{tgt}": losses.build_regressor(cfg.embed_dim, cfg.diva_decorrnet_dim,
                                                   name=f"regressor_{src}_{tgt}")
            for src, tgt in self.directions
        }
        self.proxies = None
        if cfg.loss == "proxy" and "discriminative" in heads:
            self.proxies = self.add_weight(
                name="proxies", shape=(self.num_classes, cfg.embed_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0, seed=cfg.seed))

    def build(self, input_shape=None):
        for reg in self.regressors.values():
            reg.build((None, self.cfg.embed_dim))
        self.built = True

    def variable_groups(self) -> dict:
        """Optimizer group -> variables (spec 5.1)."""
        return {
            "beta": list(self.betas.values()),
            "regressor": [v for r in self.regressors.values() for v in r.trainable_variables],
            "proxy": [] if self.proxies is None else [self.proxies],
        }

    def _distance_margin(self, emb, labels, seed, beta_name):
        trip = miners.distance_weighted_triplets(emb, labels, seed, self.cfg.miner_distance_lower_cutoff)
        return losses.margin_loss(emb, labels, self.betas[beta_name], trip, self.cfg.loss_margin_margin)

    def _discriminative(self, emb, labels, seed):
        cfg = self.cfg
        if cfg.loss == "margin":
            return self._distance_margin(emb, labels, seed, "discriminative")
        if cfg.loss == "triplet":
            return losses.triplet_semihard_loss(emb, labels, cfg.loss_triplet_margin)
        if cfg.loss == "multisimilarity":
            return losses.multi_similarity_loss(emb, labels, cfg.loss_ms_alpha, cfg.loss_ms_beta,
                                                cfg.loss_ms_base, cfg.loss_ms_epsilon)
        return losses.proxy_softmax_loss(emb, labels, self.proxies, cfg.loss_proxy_scale,
                                         cfg.loss_proxy_margin)

    def call(self, embeddings: dict, labels, seed, keys=None, queue=None):
        cfg = self.cfg
        seed = tf.cast(seed, tf.int64)
        labels = tf.cast(labels, tf.int32)
        embeddings = {k: tf.cast(v, tf.float32) for k, v in embeddings.items()}
        terms = {}

        def sub_seed(k):
            return seed + tf.constant([0, 1_000_003], tf.int64) * k

        if "discriminative" in embeddings:
            terms["discriminative"] = self._discriminative(embeddings["discriminative"], labels, sub_seed(1))
        if "shared" in embeddings:
            emb = embeddings["shared"]
            trip = miners.shared_permuted_triplets(emb, labels, sub_seed(2), cfg.miner_distance_lower_cutoff)
            terms["shared"] = cfg.diva_alpha_shared * losses.margin_loss(
                emb, labels, self.betas["shared"], trip, cfg.loss_margin_margin)
        if "intra" in embeddings:
            emb = embeddings["intra"]
            trip = miners.intra_random_triplets(labels, sub_seed(3))
            terms["intra"] = cfg.diva_alpha_intra * losses.margin_loss(
                emb, labels, self.betas["intra"], trip, cfg.loss_margin_margin)
        if "selfsimilarity" in embeddings and keys is not None:
            terms["selfsimilarity"] = cfg.diva_alpha_ssl * losses.dance_loss(
                embeddings["selfsimilarity"], tf.cast(keys, tf.float32), tf.cast(queue, tf.float32),
                cfg.diva_moco_temperature, cfg.diva_moco_lower_cutoff, cfg.diva_moco_upper_cutoff,
                fixed=cfg.diva_fixed, weighted=cfg.diva_ssl == "fast_moco")
        for k, task in enumerate(self.aux_disc_tasks):
            head = task[: -len("_disc")]
            terms[task] = cfg.diva_aux_discriminative * self._distance_margin(
                embeddings[head], labels, sub_seed(4 + k), task)
        if self.directions:
            by_direction = {(src, tgt): self.regressors[f"{src}-{tgt}"] for src, tgt in self.directions}
            terms["decorrelation"] = losses.directions_loss(embeddings, by_direction, self.rhos,
                                                            self.directions)
        total = tf.add_n(list(terms.values()))
        return total, terms

    def log_names(self) -> list:
        """Names of the loss terms and statistics a step reports, in a stable order."""
        cfg = self.cfg
        names = [t for t in ("discriminative", "selfsimilarity", "shared", "intra")
                 if t in cfg.diva_features] + self.aux_disc_tasks
        if self.directions:
            names.append("decorrelation")
        if "selfsimilarity" in cfg.diva_features:
            names += list(diagnostics.DANCE_STATISTICS)
        return names + [diagnostics.correlation_name(s, t) for s, t in self.directions]

    def statistics(self, embeddings: dict, keys=None, queue=None) -> dict:
        """Diagnostics of this step's auxiliary tasks (`diva_tf.diagnostics`), without gradient."""
        cfg = self.cfg
        embeddings = {k: tf.stop_gradient(tf.cast(v, tf.float32)) for k, v in embeddings.items()}
        stats = {}
        if "selfsimilarity" in embeddings and keys is not None:
            stats.update(diagnostics.dance_statistics(
                embeddings["selfsimilarity"], tf.cast(keys, tf.float32), tf.cast(queue, tf.float32),
                cfg.diva_moco_temperature, cfg.diva_moco_lower_cutoff, cfg.diva_moco_upper_cutoff,
                cfg.diva_fixed, cfg.diva_ssl == "fast_moco"))
        if self.directions:
            stats.update(diagnostics.decorrelation_statistics(
                embeddings, {(s, t): self.regressors[f"{s}-{t}"] for s, t in self.directions}))
        return stats
