"""The DiVA training objective (algorithm.md 4.7) and the parameters it owns: three beta vectors, the
decorrelation regressors and, for the proxy loss, the class proxies.

Pure loss functions live in `diva_tf.objectives.losses` and miners in `diva_tf.objectives.miners`; this layer only picks
which apply to the configured heads and sums them with their weights. The discriminative loss and
its miner are the registered ones of --loss and --miner (`diva_tf.objectives.registry`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from diva_tf.objectives import diagnostics, losses, miners, registry
from diva_tf.objectives.options import ObjectiveOptions

MARGIN_TASKS = ("discriminative", "shared", "intra")


class DiVAObjective(keras.layers.Layer):
    """(embeddings per head, labels, seed, keys, queue) -> (total loss, {term: value}).

    Built for the heads of `head_dims` ({head: dimension}, in head order) and `num_classes`
    training classes from `ObjectiveOptions` (the margin, discriminative, DaNCE, decorrelation
    and task-weight groups); `seed` seeds the proxies' initialisation. A head set that the options
    do not fit (e.g. a decorrelation direction naming a missing head) is a ConfigError.
    """

    def __init__(self, head_dims: dict, num_classes: int, options: ObjectiveOptions | None = None,
                 seed: int | None = None, **kwargs):
        super().__init__(name="objective", dtype="float32", **kwargs)
        options = ObjectiveOptions() if options is None else options
        self.num_classes = int(num_classes)
        self.heads = list(head_dims)
        options.check_heads(self.heads)
        self.head_dims = {h: int(head_dims[h]) for h in self.heads}
        heads = self.heads
        spec = registry.LOSSES[options.loss]
        self.discriminative_loss = registry.build_loss(options.loss, options.miner, options)
        self.margin = options.loss_margin_margin
        self.lower_cutoff = options.miner_distance_lower_cutoff
        self.alpha = {"selfsimilarity": options.diva_alpha_ssl,
                      "shared": options.diva_alpha_shared, "intra": options.diva_alpha_intra}
        self.dance_args = dict(temperature=options.diva_moco_temperature,
                               lower_cutoff=options.diva_moco_lower_cutoff,
                               upper_cutoff=options.diva_moco_upper_cutoff,
                               fixed=options.diva_fixed,
                               **registry.SELF_SUPERVISED_LOSSES[options.diva_ssl])
        self.margin_tasks = [t for t in MARGIN_TASKS
                             if t in heads and (t != "discriminative" or "beta" in spec.params)]
        # Beyond DiVA (aux_discriminative > 0): a class margin loss with its own betas on each
        # auxiliary head, so that every head is also discriminative (an ABE/CGD-like ensemble).
        self.aux_discriminative = float(options.diva_aux_discriminative)
        self.aux_disc_tasks = [f"{h}_disc" for h in heads
                               if h != "discriminative" and self.aux_discriminative > 0]
        self.aux_margin_loss = registry.build_loss("margin", "distance", options)
        # Beyond DiVA (combined_loss > 0, CGD-style): the same class margin loss on the
        # equal-weight concatenation of the heads, i.e. on the embedding that is evaluated.
        self.combined_loss = float(options.diva_combined_loss)
        self.combined_tasks = ["combined"] if self.combined_loss > 0 else []
        self.betas = {
            t: self.add_weight(name=f"beta_{t}", shape=(self.num_classes,),
                               initializer=keras.initializers.Constant(options.loss_margin_beta))
            for t in self.margin_tasks + self.aux_disc_tasks + self.combined_tasks
        }
        self.rhos = options.rhos(heads)
        self.regressors = {
            f"{src}-{tgt}": losses.build_regressor(self.head_dims[src], options.diva_decorrnet_dim,
                                                   out_dim=self.head_dims[tgt],
                                                   name=f"regressor_{src}_{tgt}")
            for src, tgt in self.rhos
        }
        self.proxies = None
        if "proxies" in spec.params and "discriminative" in heads:
            self.proxies = self.add_weight(
                name="proxies", shape=(self.num_classes, self.head_dims["discriminative"]),
                initializer=losses.proxy_initializer(seed))

    def build(self, input_shape=None):
        for (src, _), reg in self._by_direction().items():
            reg.build((None, self.head_dims[src]))
        self.built = True

    def variable_groups(self) -> dict:
        """Optimizer group -> variables (algorithm.md 5.1)."""
        return {
            "beta": list(self.betas.values()),
            "regressor": [v for r in self.regressors.values() for v in r.trainable_variables],
            "proxy": [] if self.proxies is None else [self.proxies],
        }

    def _margin_task(self, task, emb, labels, triplets):
        return self.alpha[task] * losses.margin_loss(emb, labels, self.betas[task], triplets,
                                                     self.margin)

    def call(self, embeddings: dict, labels, seed, keys=None, queue=None):
        seed = tf.cast(seed, tf.int64)
        labels = tf.cast(labels, tf.int32)
        embeddings = {k: tf.cast(v, tf.float32) for k, v in embeddings.items()}
        terms = {}

        def sub_seed(k):
            return seed + tf.constant([0, 1_000_003], tf.int64) * k

        if "discriminative" in embeddings:
            params = {"beta": self.betas.get("discriminative"), "proxies": self.proxies}
            terms["discriminative"] = self.discriminative_loss(embeddings["discriminative"], labels,
                                                               sub_seed(1), params)
        if "shared" in embeddings:
            emb = embeddings["shared"]
            trip = miners.shared_permuted_triplets(emb, labels, sub_seed(2), self.lower_cutoff)
            terms["shared"] = self._margin_task("shared", emb, labels, trip)
        if "intra" in embeddings:
            emb = embeddings["intra"]
            trip = miners.intra_random_triplets(labels, sub_seed(3))
            terms["intra"] = self._margin_task("intra", emb, labels, trip)
        if "selfsimilarity" in embeddings and keys is not None:
            terms["selfsimilarity"] = self.alpha["selfsimilarity"] * losses.dance_loss(
                embeddings["selfsimilarity"], tf.cast(keys, tf.float32), tf.cast(queue, tf.float32),
                **self.dance_args)
        for k, task in enumerate(self.aux_disc_tasks):
            terms[task] = self.aux_discriminative * self.aux_margin_loss(
                embeddings[task[:-len("_disc")]], labels, sub_seed(4 + k), {"beta": self.betas[task]})
        if self.combined_tasks:
            combined = tf.math.l2_normalize(tf.concat([embeddings[h] for h in self.heads], -1), -1)
            terms["combined"] = self.combined_loss * self.aux_margin_loss(
                combined, labels, sub_seed(7), {"beta": self.betas["combined"]})
        if self.rhos:
            terms["decorrelation"] = losses.directions_loss(embeddings, self._by_direction(), self.rhos)
        total = tf.add_n(list(terms.values()))
        return total, terms

    def _by_direction(self) -> dict:
        return {(src, tgt): self.regressors[f"{src}-{tgt}"] for src, tgt in self.rhos}

    def log_names(self) -> list:
        """Names of the loss terms and statistics a step reports, in a stable order."""
        names = [t for t in ("discriminative", "selfsimilarity", "shared", "intra")
                 if t in self.heads] + self.aux_disc_tasks + self.combined_tasks
        if self.rhos:
            names.append("decorrelation")
        if "selfsimilarity" in self.heads:
            names += list(diagnostics.DANCE_STATISTICS)
        return names + [diagnostics.correlation_name(s, t) for s, t in self.rhos]

    def statistics(self, embeddings: dict, keys=None, queue=None) -> dict:
        """Diagnostics of this step's auxiliary tasks (`diva_tf.objectives.diagnostics`), without gradient."""
        embeddings = {k: tf.stop_gradient(tf.cast(v, tf.float32)) for k, v in embeddings.items()}
        stats = {}
        if "selfsimilarity" in embeddings and keys is not None:
            stats.update(diagnostics.dance_statistics(
                embeddings["selfsimilarity"], tf.cast(keys, tf.float32), tf.cast(queue, tf.float32),
                **self.dance_args))
        if self.rhos:
            stats.update(diagnostics.decorrelation_statistics(embeddings, self._by_direction()))
        return stats
