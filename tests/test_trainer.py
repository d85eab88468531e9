"""The custom train_step under tf.distribute: global-batch gradients, key-encoder EMA, queue."""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from diva_tf.config import Config
from diva_tf.training.optimizers import ADAM_EPSILON
from diva_tf.training.trainer import DiVATrainer

CFG = Config(backbone="tiny", backbone_weights="none", bs=8, embed_dim=8, diva_decorrnet_dim=16,
             diva_moco_n_key_batches=2, seed=3, lr=1e-3)


def _batch(seed=0, bs=8):
    rng = np.random.RandomState(seed)
    v1 = rng.uniform(0, 255, (bs, 32, 32, 3)).astype("float32")
    v2 = rng.uniform(0, 255, (bs, 32, 32, 3)).astype("float32")
    return v1, v2, np.repeat(np.arange(bs // 2), 2).astype("int32")


def _trainer(strategy, cfg=CFG, num_classes=4, optimizer=None):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        t = DiVATrainer(cfg, num_classes, batch_size=cfg.bs, objective=cfg, seed=cfg.seed)
        t.compile(optimizer=cfg if optimizer is None else optimizer, jit_compile=cfg.jit_compile)
        if t.use_keys:
            t.queue.assign(tf.math.l2_normalize(tf.random.stateless_normal(t.queue.shape, [1, 2]), -1))
            t.queue_filled.assign(True)
    return t


def _global_gradients(strategy, batch):
    t = _trainer(strategy)
    dist = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))))

    @tf.function
    def step(b):
        grads, total, _, _ = t.compute_gradients(*b)
        return {k: g for k, (g, _) in grads.items()}, total

    grads, total = strategy.run(step, args=(dist,))
    grads = tf.nest.map_structure(lambda x: strategy.reduce("SUM", x, axis=None), grads)
    total = strategy.experimental_local_results(total)[0]
    return grads, float(total)


def test_two_replica_gradients_equal_single_device():
    """Trap 1 and 3: all-gathered mining + 1/replicas scaling reproduce one device's gradients."""
    assert len(tf.config.list_logical_devices("CPU")) >= 2, "conftest sets two logical CPUs"
    batch = _batch()
    g1, l1 = _global_gradients(tf.distribute.get_strategy(), batch)
    g2, l2 = _global_gradients(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), batch)
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert set(g1) == {"network", "beta", "regressor"}
    for group in g1:
        for a, b in zip(g1[group], g2[group]):
            scale = max(1.0, float(tf.reduce_max(tf.abs(a))))
            np.testing.assert_allclose(a.numpy() / scale, b.numpy() / scale, atol=1e-5)


def test_momentum_update_and_fifo_queue_after_the_step():
    t = _trainer(tf.distribute.get_strategy())
    batch = _batch(1)
    key_before = [w.numpy().copy() for w, _ in t._ema_pairs]
    queue_before = t.queue.numpy().copy()
    keys_expected = t.key_encoder(batch[1], training=False)["selfsimilarity"].numpy()
    t.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1, verbose=0)
    m = CFG.diva_moco_momentum
    for (k, q), k0 in zip(t._ema_pairs, key_before):
        np.testing.assert_allclose(k.numpy(), m * k0 + (1 - m) * q.numpy(), rtol=1e-5, atol=1e-7)
    # FIFO: oldest B rows dropped from the front, keys of this step (pre-update encoder) appended.
    np.testing.assert_allclose(t.queue.numpy()[:-8], queue_before[8:], atol=0)
    np.testing.assert_allclose(t.queue.numpy()[-8:], keys_expected, atol=1e-5)


def test_unequal_head_dims_train_with_queue_and_regressors_sized_per_head():
    cfg = CFG.replace(head_dims=[12, 8, 6, 4], diva_decorrnet_dim=16)
    t = _trainer(tf.distribute.get_strategy(), cfg)
    assert t.queue.shape == (2 * 8, 8)
    dims = cfg.dims
    for (src, tgt), reg in t.objective._by_direction().items():
        k1, _, k2, b2 = reg.trainable_variables
        assert (k1.shape, k2.shape, b2.shape) == ((dims[src], 16), (16, dims[tgt]), (dims[tgt],))
    batch = _batch(4)
    keys_expected = t.key_encoder(batch[1], training=False)["selfsimilarity"].numpy()
    history = t.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    np.testing.assert_allclose(t.queue.numpy()[-8:], keys_expected, atol=1e-5)


def test_betas_and_regressors_train_without_weight_decay():
    cfg = CFG.replace(decay=10.0)
    t = _trainer(tf.distribute.get_strategy(), optimizer=cfg)
    grads, *_ = t.compute_gradients(*_batch(2))
    t_plain = _trainer(tf.distribute.get_strategy())
    plain, *_ = t_plain.compute_gradients(*_batch(2))
    for group in ("beta", "regressor"):
        for a, b in zip(grads[group][0], plain[group][0]):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    (gn, vn), (pn, _) = grads["network"], plain["network"]
    for a, b, v in zip(gn, pn, vn):
        np.testing.assert_allclose(a.numpy() - b.numpy(), (10.0 - CFG.decay) * v.numpy(), rtol=1e-3, atol=1e-5)


def test_fit_on_two_replicas_matches_one_device():
    """A whole `fit` step (optimizers, EMA, queue) under MirroredStrategy equals one device's."""
    batch = _batch(4)
    results = []
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        t = _trainer(strategy)
        hist = t.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1, steps_per_epoch=2, verbose=0)
        results.append((hist.history["loss"][0], [w.numpy() for w in t.weights]))
    (l1, w1), (l2, w2) = results
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert len(w1) == len(w2)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_mixed_precision_keeps_losses_and_embeddings_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        t = _trainer(tf.distribute.get_strategy())
        batch = _batch(5)
        assert t.embedder.get_layer("tiny").compute_dtype == "bfloat16"
        out = t.embedder(batch[0])
        assert all(v.dtype == tf.float32 for v in out.values())
        total, terms, *_ = t.compute_objective(*batch, training_mode=False)
        assert total.dtype == tf.float32 and all(v.dtype == tf.float32 for v in terms.values())
        hist = t.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1, verbose=0)
        assert np.isfinite(hist.history["loss"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_fc_lr_gives_the_heads_their_own_learning_rate():
    """--fc_lr: heads in their own Adam group. Closed form of Keras Adam's first step (m = 0.1 g,
    v = 0.001 g^2, step lr * sqrt(0.001) / 0.1 * m / (sqrt(v) + eps)): w1 = w0 - lr * g / (|g| +
    eps / sqrt(0.001)), ~ w0 - lr * sign(g), with lr = --fc_lr for the heads' kernels and biases and
    --lr for every other network variable."""
    cfg = CFG.replace(lr=1e-5, fc_lr=1e-2, decay=0.0)
    t = _trainer(tf.distribute.get_strategy(), cfg)
    heads = {id(v) for v in t.variable_groups()["heads"]}
    assert len(heads) == 8 and not heads & {id(v) for v in t.variable_groups()["network"]}
    assert len(heads) + len(t.variable_groups()["network"]) == len(t.embedder.trainable_variables)
    batch = _batch(5)
    grads, *_ = t.compute_gradients(*batch)
    before = {id(v): v.numpy().copy() for group in ("network", "heads") for v in grads[group][1]}
    t.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1, verbose=0)
    for group, lr in (("network", 1e-5), ("heads", 1e-2)):
        for g, v in zip(*grads[group]):
            g, w0 = g.numpy().astype(np.float64), before[id(v)]
            step = v.numpy().astype(np.float64) - w0
            ulp = np.spacing(np.abs(w0).astype(np.float32)).astype(np.float64)  # w1 is float32
            # |g| near eps: float noise between the two gradient computations moves such an
            # element by some fraction of lr; Adam's first step is bounded by lr everywhere.
            clear = np.abs(g) > 1e-5
            assert clear.mean() > 0.5
            want = -lr * g[clear] / (np.abs(g[clear]) + ADAM_EPSILON / np.sqrt(1e-3))
            assert np.all(np.abs(step[clear] - want) <= 1e-3 * lr + ulp[clear])
            assert np.all(np.abs(step) <= lr + ulp)


def test_a_keras_optimizer_trains_every_group_in_one_step():
    """compile(optimizer=<Keras optimizer>): one optimizer, one apply a step, over the network,
    betas and regressors, without DiVA's coupled L2: SGD's w1 = w0 - lr * g for every variable."""
    t = _trainer(tf.distribute.get_strategy(), optimizer=keras.optimizers.SGD(0.1))
    assert len({id(o) for o in t.optimizers.values()}) == 1 and t.coupled_decay("network") == 0.0
    batch = _batch(3)
    grads, *_ = t.compute_gradients(*batch)
    before = {id(v): v.numpy().copy() for g, vs in grads.values() for v in vs}
    t.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1, verbose=0)
    assert int(t.optimizer.iterations) == 1
    assert set(grads) == {"network", "beta", "regressor"}
    for g, variables in grads.values():
        for gi, v in zip(g, variables):
            np.testing.assert_allclose(v.numpy(), before[id(v)] - 0.1 * gi.numpy(), rtol=1e-5, atol=1e-6)
    path = os.path.join(tempfile.mkdtemp(), "embedder.keras")  # the trained embedder as .keras
    t.embedder.save(path)
    loaded = keras.models.load_model(path)
    for head, value in t.embedder(batch[0], training=False).items():
        np.testing.assert_allclose(loaded(batch[0], training=False)[head], value, atol=1e-6)


def test_compile_takes_no_loss_and_a_group_dict_must_cover_every_group():
    from diva_tf.core.errors import ConfigError

    t = _trainer(tf.distribute.get_strategy())
    with pytest.raises(ConfigError, match="no loss"):
        t.compile(loss="mse")
    with pytest.raises(ConfigError, match=r"group\(s\) \['beta', 'regressor', 'proxy'\]"):
        t.compile(optimizer={"network": "adam"})


def test_schedules_follow_the_epochs_fit_runs():
    """Step decay by epoch with fit's initial_epoch, and cosine ending at fit's last epoch."""
    seen = []

    class LearningRates(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(self.model.optimizers["network"].learning_rate))

    batches = tf.data.Dataset.from_tensors(_batch(2)).repeat()
    t = _trainer(tf.distribute.get_strategy(), optimizer=CFG.replace(tau=[2], gamma=0.5))
    t.fit(batches, initial_epoch=1, epochs=4, steps_per_epoch=2, callbacks=[LearningRates()],
          verbose=0)
    np.testing.assert_allclose(seen, [1e-3] * 2 + [5e-4] * 4, rtol=1e-6)
    seen.clear()
    t = _trainer(tf.distribute.get_strategy(), optimizer=CFG.replace(scheduler="cosine"))
    t.fit(batches, epochs=3, steps_per_epoch=1, callbacks=[LearningRates()], verbose=0)
    np.testing.assert_allclose(seen, 1e-3 * 0.5 * (1 + np.cos(np.pi * np.arange(3) / 3)),
                               rtol=1e-5)


def test_fit_fills_an_empty_queue_from_its_first_batches_once():
    from diva_tf.core.errors import ConfigError

    keras.utils.set_random_seed(0)
    t = DiVATrainer(CFG, 4, batch_size=8, objective=CFG, seed=CFG.seed)
    t.compile(optimizer=CFG)
    with pytest.raises(ConfigError, match="fill_queue"):
        t.fit(iter([_batch(6)]), epochs=1, steps_per_epoch=1, verbose=0)
    b0, b1 = _batch(6), _batch(7)
    fill_b1 = t.key_encoder(b1[0], training=False)["selfsimilarity"].numpy()
    step_keys = t.key_encoder(b0[1], training=False)["selfsimilarity"].numpy()
    batches = tf.data.Dataset.from_tensors(b0).concatenate(tf.data.Dataset.from_tensors(b1))
    t.fit(batches, epochs=1, steps_per_epoch=1, verbose=0)
    # filled with [keys(b0), keys(b1)] (view 1), then the step on b0 enqueued its view-2 keys
    np.testing.assert_allclose(t.queue.numpy()[:8], fill_b1, atol=1e-5)
    np.testing.assert_allclose(t.queue.numpy()[8:], step_keys, atol=1e-5)
    restored = DiVATrainer(CFG, 4, batch_size=8, objective=CFG, seed=CFG.seed)
    restored.compile(optimizer=CFG)
    ckpt_dir = tf.train.Checkpoint(trainer=t).write(os.path.join(tempfile.mkdtemp(), "ckpt"))
    tf.train.Checkpoint(trainer=restored).read(ckpt_dir).assert_existing_objects_matched()
    queue = restored.queue.numpy().copy()
    restored.fit(batches, epochs=1, steps_per_epoch=1, verbose=0)  # no refill: FIFO goes on
    np.testing.assert_allclose(restored.queue.numpy()[:8], queue[8:], atol=0)


def _eval_data(n_classes=5, per_class=4, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.uniform(0, 255, (n_classes * per_class, 32, 32, 3)).astype("float32")
    return images, np.repeat(np.arange(n_classes), per_class)


def test_evaluate_gives_the_retrieval_metrics_of_every_head_and_the_combination():
    from reference_metrics import retrieval

    t = _trainer(tf.distribute.get_strategy())
    images, labels = _eval_data()
    scores = t.evaluate(tf.data.Dataset.from_tensor_slices((images, labels)).batch(8),
                        recall_k=(1, 2))
    embs = {h: v.numpy() for h, v in t.embedder(images, training=False).items()}
    combined = np.concatenate([embs[h] for h in t.embedder.output], axis=1) / 2.0  # 4 unit heads
    for name, emb in {**embs, "combined[1,1,1,1]": combined}.items():
        want = retrieval(emb, labels, (1, 2))
        for metric in ("recall@1", "recall@2", "map@r"):
            assert scores[f"{name}/{metric}"] == pytest.approx(want[metric], abs=1e-6), name
    assert t.evaluate(images, labels, batch_size=6, recall_k=(1, 2)) == scores


def test_fit_validation_data_logs_the_retrieval_metrics():
    t = _trainer(tf.distribute.get_strategy())
    images, labels = _eval_data()
    history = t.fit(tf.data.Dataset.from_tensors(_batch(1)), epochs=1, steps_per_epoch=1,
                    validation_data=tf.data.Dataset.from_tensor_slices((images, labels)).batch(10),
                    verbose=0)
    scores = t.evaluate(tf.data.Dataset.from_tensor_slices((images, labels)).batch(10))
    assert history.history["val_combined[1,1,1,1]/recall@1"] == [scores["combined[1,1,1,1]/recall@1"]]
