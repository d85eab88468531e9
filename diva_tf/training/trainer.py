"""`DiVATrainer`: a keras.Model whose `train_step` (used through `fit`) runs one DiVA iteration
(algorithm.md 5.2) with global-batch semantics under any tf.distribute strategy.

Per step: query forward on view 1 (frozen BN = training=False), key forward on view 2, embeddings,
keys and labels all-gathered across replicas, the objective on the global batch scaled by
1/replicas (Keras sums replica gradients and does not divide a scalar loss), one step of each parameter group's
optimizer (of the one optimizer of every group, when compile was given a Keras optimizer), then
the momentum update of the key encoder and the FIFO enqueue of this step's keys.

`fit` takes a dataset of class-balanced global batches: (view1, view2, labels) as
`diva_tf.data.train_dataset` makes them, or (images, labels), the key encoder then seeing the same
images as the query network. Labels are int 0..num_classes-1 and every class in a batch needs a
second image (samples_per_class >= 2) for the margin losses.
"""

from __future__ import annotations

import itertools

import keras
import tensorflow as tf

from diva_tf.core.errors import ConfigError
from diva_tf.model.backbones.batchnorm import synchronize_batchnorm
from diva_tf.model.network import build_embedding_model, head_variables
from diva_tf.model.options import ModelOptions
from diva_tf.objectives.objective import DiVAObjective
from diva_tf.objectives.options import ObjectiveOptions
from diva_tf.training.distribute import num_workers
from diva_tf.training.optimizers import DECAYED_GROUPS, OPTIMIZERS, add_coupled_l2, optimizers_of
from diva_tf.training.options import OptimizerOptions
from diva_tf.training.schedules import EpochClock


def enqueue(queue, keys):
    """The MoCo key queue of the self-similarity head (algorithm.md 4.5), FIFO: drop the oldest B rows
    from the front and append this step's keys at the end."""
    keys = tf.cast(tf.stop_gradient(keys), queue.dtype)
    batch = keys.shape[0] if keys.shape[0] is not None else tf.shape(keys)[0]
    return tf.concat([queue[batch:], keys], axis=0)


def assign_in_replica_context(pairs) -> None:
    """Assign values that are identical on every replica to (possibly mirrored) variables."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1 and not tf.distribute.has_strategy():
        for var, value in pairs:
            var.assign(value)
        return

    def merge_fn(strategy, *values):
        for (var, _), value in zip(pairs, values):
            tf_var = var.value if isinstance(var, keras.Variable) else var
            strategy.extended.update(tf_var, lambda v, x: v.assign(x), args=(value,), group=False)

    ctx.merge_call(merge_fn, args=tuple(value for _, value in pairs))


@tf.custom_gradient
def _dense_gradient(x):
    """Identity whose gradient is made dense: all_gather's backward pass cannot take the
    IndexedSlices that tf.gather-based losses produce."""
    return tf.identity(x), lambda dy: tf.convert_to_tensor(dy)


def _gather(x):
    """All-gather along the batch axis (differentiable; identity with one replica)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    devices = ctx.strategy.extended.worker_devices
    if not x.device and len(devices) == 1:
        # MultiWorkerMirrored with one device per worker: all_gather takes its destination from
        # x.device, which is empty inside tf.function, and would fail with "destinations can not be empty".
        with tf.device(devices[0]):
            x = tf.identity(x)
    return _dense_gradient(ctx.all_gather(x, axis=0))


class _FollowEpochs(keras.callbacks.Callback):
    """Sets the trainer's `EpochClock` to the epoch `fit` starts (what the schedules read)."""

    def __init__(self, clock: EpochClock):
        super().__init__()
        self.clock = clock

    def on_epoch_begin(self, epoch, logs=None):
        self.clock.epoch.assign(epoch)


class DiVATrainer(keras.Model):
    """Holds the query network (`embedder`, what gets evaluated and exported), key encoder, queue,
    objective and one optimizer per parameter group.

    Built from `ModelOptions` (network) and `ObjectiveOptions` (objective, key-encoder momentum,
    queue length in batches) for `num_classes` training classes and global batches of
    `batch_size`; `seed` seeds the heads' initialisation and the miners. Then, as any Keras model:
    `compile` (DiVA's optimizer groups by default, or a Keras optimizer), `fit` (the learning-rate
    schedules follow its epochs), `evaluate` (retrieval metrics of every head and combination).
    """

    def __init__(self, model: ModelOptions, num_classes: int, *, batch_size: int,
                 objective: ObjectiveOptions | None = None, seed: int = 0, **kwargs):
        super().__init__(name="diva_trainer", **kwargs)
        objective = ObjectiveOptions() if objective is None else objective
        self.frozen_bn, self.seed = bool(model.frozen_bn), int(seed)
        self.momentum = float(objective.diva_moco_momentum)
        self.n_key_batches = int(objective.diva_moco_n_key_batches)
        self.embedder = build_embedding_model(model, seed)
        if not self.frozen_bn and tf.distribute.get_strategy().num_replicas_in_sync > 1:
            # Replica-local batch statistics would differ from one device's and let the replicas'
            # moving statistics drift apart (Keras keeps each replica's own update).
            synchronize_batchnorm(self.embedder)
        self.objective = DiVAObjective(model.dims, num_classes, objective, seed)
        self.objective.build()
        self.use_keys = "selfsimilarity" in model.diva_features
        if self.use_keys:
            self.key_encoder = build_embedding_model(model, seed, weights="none", name="key_encoder")
            self.key_encoder.set_weights(self.embedder.get_weights())
            self.key_encoder.trainable = False
            trainable = {id(v) for v in self.embedder.trainable_variables}
            self._ema_pairs = [(k, q) for k, q in zip(self.key_encoder.weights, self.embedder.weights)
                               if id(q) in trainable]
            self.queue = self.add_weight(
                name="queue", shape=(self.n_key_batches * batch_size, model.dims["selfsimilarity"]),
                initializer="zeros", trainable=False)
            # Checkpointed with the queue: a resumed run does not fill it again.
            self.queue_filled = self.add_weight(name="queue_filled", shape=(), dtype="bool",
                                                initializer="zeros", trainable=False)
        self.clock = EpochClock()
        self.optimizer_options, self.optimizers = None, {}
        self._loss_trackers = {}
        self.built = True

    # ---- Keras plumbing ------------------------------------------------------------------
    def call(self, images, training=False):
        return self.embedder(images, training=training)

    def compile(self, optimizer=None, loss=None, loss_weights=None, metrics=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1,
                jit_compile="auto", auto_scale_loss=True):
        """Keras's compile; the objective is the loss (`loss` and `metrics` must stay unset).

        optimizer:
          - None: DiVA's published parameter groups with the defaults of `OptimizerOptions`;
            an `OptimizerOptions`: the same groups with its settings. One optimizer per group:
            network (coupled L2 for adam), [heads, with --fc_lr,] betas, regressors, proxies,
            each with its learning rate and the per-epoch schedule.
          - a Keras optimizer (or its name): that one optimizer trains every group (network,
            betas, regressors, proxies) with its own learning rate and schedule, one `apply` a
            step; no coupled L2 is added (use its `weight_decay`).
          - a dict {group: optimizer} over `OptimizerOptions().learning_rates`' groups: one
            optimizer per group.
        jit_compile="auto" is Keras's: XLA on GPU, not on CPU.
        Every optimizer slot and loss tracker is created now (under the strategy scope, not
        lazily in a replica).
        """
        if loss is not None or loss_weights or metrics or weighted_metrics:
            raise ConfigError("DiVATrainer's loss is its DiVA objective: compile takes no loss or "
                              "metrics (evaluate() gives the retrieval metrics)")
        self.optimizer_options, self.optimizers = self._optimizers_of(optimizer)
        super().compile(optimizer=self.optimizers["network"], run_eagerly=run_eagerly,
                        steps_per_execution=steps_per_execution, jit_compile=jit_compile,
                        auto_scale_loss=auto_scale_loss)
        self.build_optimizers()
        self.init_trackers()

    def _optimizers_of(self, optimizer) -> tuple:
        """(OptimizerOptions or None, {group: optimizer}) for compile's `optimizer`."""
        if optimizer is None or isinstance(optimizer, OptimizerOptions):
            options = OptimizerOptions() if optimizer is None else optimizer
            return options, optimizers_of(options, self.clock)
        groups = list(OptimizerOptions().learning_rates)
        if isinstance(optimizer, dict):
            missing = [g for g in groups if g not in optimizer]
            if missing:
                raise ConfigError(f"compile: the optimizer dict has no optimizer for group(s) "
                                  f"{missing}; expected one for each of {groups}")
            return None, {g: keras.optimizers.get(o) for g, o in optimizer.items()}
        optimizer = keras.optimizers.get(optimizer)
        return None, dict.fromkeys(groups, optimizer)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, *,
            shuffle: bool = False, **kwargs):
        """keras.Model.fit: the learning-rate schedules follow its epochs (`initial_epoch` to
        `epochs`); the key queue, when not filled (`fill_queue`) nor restored from a checkpoint,
        is filled first from the first batches of `x` (a tf.data.Dataset). Shuffle is off by
        default: the batches come sampled already (Keras ignores `shuffle` for a dataset, but
        warns when it is on)."""
        if self.use_keys and not bool(self.queue_filled.numpy()):
            if not isinstance(x, tf.data.Dataset):
                raise ConfigError("the key queue is empty: call trainer.fill_queue(batches) before "
                                  "fit, or give fit a tf.data.Dataset to fill it from")
            self.fill_queue(x.repeat())
        self.clock.epochs.assign(epochs)
        callbacks = [_FollowEpochs(self.clock), *(callbacks or [])]
        return super().fit(x, y, batch_size, epochs, verbose, callbacks, shuffle=shuffle, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", steps=None, *,
                 combinations=None, n_clusters=None, recall_k=None, dataset=None,
                 **kwargs) -> dict:
        """Retrieval and clustering metrics (`evaluate_model`'s) of `embedder` on `x`: batches of
        (images, labels) such as `eval_dataset` makes, or images with labels `y`.

        Returns {"<head or combination>/<metric>": value} for each head and head combination
        (default: the published weights of `dataset`, all 1 without one), so that `fit`'s
        `validation_data` logs them as "val_<head>/<metric>". The metrics need every embedding at
        once, so this replaces Keras's batch-wise `test_step`; `loss` is not computed.
        """
        from diva_tf.evaluation.embed import embed_dataset
        from diva_tf.evaluation.options import default_combinations
        from diva_tf.evaluation.suite import evaluate_embeddings

        if y is not None:
            x = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size or 32)
        if steps is not None:
            x = itertools.islice(x, steps)
        heads = list(self.embedder.output)
        if combinations is None:
            combinations = default_combinations(dataset, heads)
        embed = tf.function(lambda images: self.embedder(images, training=False),
                            reduce_retracing=True)
        embs, labels = embed_dataset(embed, x, verbose=verbose not in (0, "auto", False))
        scores = evaluate_embeddings(embs, labels, heads, combinations, recall_k, n_clusters,
                                     dataset)
        return {f"{name}/{metric}": float(value) for name, metrics in scores.items()
                for metric, value in metrics.items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """No-op: everything is built in __init__. Keras's version pulls one batch off the training
        iterator (shifting every epoch's batches by one) and fails under MultiWorkerMirroredStrategy."""

    def variable_groups(self) -> dict:
        network = list(self.embedder.trainable_variables)
        if "heads" not in self.optimizers:
            return {"network": network, **self.objective.variable_groups()}
        heads = head_variables(self.embedder)
        in_heads = {id(v) for v in heads}
        return {"network": [v for v in network if id(v) not in in_heads], "heads": heads,
                **self.objective.variable_groups()}

    def _by_optimizer(self, groups: dict) -> list:
        """[(optimizer, [items of its groups])] for {group: [items]}, in group order: a Keras
        optimizer shared by several groups takes them in one `apply` (one step)."""
        out = {}
        for group, items in groups.items():
            optimizer = self.optimizers[group]
            out.setdefault(id(optimizer), (optimizer, []))[1].extend(items)
        return list(out.values())

    def build_optimizers(self) -> None:
        """Create every optimizer slot now (under the strategy scope), not lazily in a replica."""
        for optimizer, variables in self._by_optimizer(self.variable_groups()):
            if variables:
                optimizer.build(variables)

    def coupled_decay(self, group: str) -> float:
        """The L2 factor the trainer adds to `group`'s gradients (DiVA's coupled weight decay)."""
        options = self.optimizer_options
        if options is None or group not in DECAYED_GROUPS:
            return 0.0
        return float(options.decay) if OPTIMIZERS[options.optimizer].coupled_decay else 0.0

    def _mean_tracker(self, name: str) -> keras.metrics.Mean:
        if name not in self._loss_trackers:
            self._loss_trackers[name] = keras.metrics.Mean(name=name)
        return self._loss_trackers[name]

    def init_trackers(self) -> None:
        """Create loss and diagnostic trackers eagerly (so `metrics` lists them before the first step)."""
        for n in ["loss"] + self.objective.log_names():
            self._mean_tracker(n)

    @property
    def metrics(self):
        return list(self._loss_trackers.values())

    # ---- one DiVA iteration -------------------------------------------------------------
    def _seed(self):
        step = tf.cast(self.optimizers["network"].iterations, tf.int64)
        return tf.stack([tf.constant(self.seed, tf.int64), step])

    def compute_objective(self, view1, view2, labels, training_mode: bool):
        """Global-batch objective for this replica's slice; returns (total, terms, global keys,
        diagnostics)."""
        keys = None
        if self.use_keys:
            keys = tf.stop_gradient(_gather(self.key_encoder(view2, training=False)["selfsimilarity"]))
        embs = {k: _gather(v) for k, v in self.embedder(view1, training=training_mode).items()}
        queue = self.queue if self.use_keys else None
        total, terms = self.objective(embs, _gather(labels), self._seed(), keys, queue)
        return total, terms, keys, self.objective.statistics(embs, keys, queue)

    def compute_gradients(self, view1, view2, labels):
        """This replica's gradients per group (coupled L2 included), before the all-reduce.

        Summed over replicas they equal the single-device gradients of the global batch.
        """
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        groups = {g: v for g, v in self.variable_groups().items() if v}
        flat_vars = [v for vs in groups.values() for v in vs]
        with tf.GradientTape() as tape:
            total, terms, keys, stats = self.compute_objective(view1, view2, labels,
                                                               training_mode=not self.frozen_bn)
            scaled = total / replicas
        flat_grads = tape.gradient(scaled, flat_vars)
        grads, start = {}, 0
        for group, variables in groups.items():
            g = flat_grads[start:start + len(variables)]
            start += len(variables)
            grads[group] = (add_coupled_l2(g, variables, self.coupled_decay(group) / replicas),
                            variables)
        return grads, total, {**terms, **stats}, keys

    def train_step(self, data):
        view1, view2, labels = data if len(data) == 3 else (data[0], data[0], data[1])
        grads, total, terms, keys = self.compute_gradients(view1, view2, labels)
        # A variable the objective does not reach has no gradient: left out here (Keras would
        # skip it too, with a "Gradients do not exist" warning).
        present = {group: [(gi, v) for gi, v in zip(g, variables) if gi is not None]
                   for group, (g, variables) in grads.items()}
        for optimizer, pairs in self._by_optimizer(present):
            if pairs:
                optimizer.apply([gi for gi, _ in pairs], [v for _, v in pairs])
        if self.use_keys:
            self.momentum_update()
            assign_in_replica_context([(self.queue, enqueue(self.queue, keys))])
        self._mean_tracker("loss").update_state(total)
        for name, value in terms.items():
            self._mean_tracker(name).update_state(value)
        logs = {m.name: m.result() for m in self.metrics}
        if num_workers() > 1:
            # Keras reduces multi-worker step outputs with strategy.reduce(MEAN, axis=0), which
            # needs a batch axis; the values are identical on every replica.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def momentum_update(self) -> None:
        """key <- m * key + (1 - m) * query over trainable variables (algorithm.md 2.3), after the step."""
        m = self.momentum
        assign_in_replica_context([(k, m * k + (1.0 - m) * q) for k, q in self._ema_pairs])

    # ---- queue initialisation (algorithm.md 4.5) ----------------------------------------
    def fill_queue(self, batches) -> None:
        """Stack key-encoder outputs on view 1 of exactly n_key_batches global batches (of a
        stream like `fit`'s; DiVA uses one with another seed). Call once before training (`fit`
        otherwise fills it from its own first batches)."""
        if not self.use_keys:
            return
        keys = []
        for i, batch in enumerate(batches):
            if i >= self.n_key_batches:
                break
            keys.append(self._key_embed(batch[0]))
        if len(keys) < self.n_key_batches:
            raise ValueError(f"queue needs {self.n_key_batches} batches, got {len(keys)}")
        self.queue.assign(tf.concat(keys, axis=0))
        self.queue_filled.assign(True)

    @tf.function
    def _key_embed(self, images):
        return self.key_encoder(images, training=False)["selfsimilarity"]
