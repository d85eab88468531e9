"""Losses and miners by name: a user's loss registered and trained (from Python and from the
flags), any registered miner with any triplet loss, each checked against numpy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference_losses as ref
from diva_tf.config import Config, ConfigError
from diva_tf.objectives import miners, registry
from diva_tf.objectives.registry import register_loss, register_miner
from diva_tf.training.trainer import DiVATrainer

SEED = tf.constant([5, 6], tf.int64)


def _batch(seed=0, b=12, dim=6, classes=4):
    rng = np.random.default_rng(seed)
    return ref.unit_rows(rng, b, dim), np.repeat(np.arange(classes), b // classes)


def contrastive_numpy(x, labels, margin):
    """mean over pairs i < j of d^2 (same label) or relu(margin - d)^2 (other label)."""
    d = ref.pairwise_distances(x.astype(np.float64))
    i, j = np.triu_indices(len(x), 1)
    same = labels[i] == labels[j]
    return np.mean(np.where(same, d[i, j] ** 2, np.maximum(margin - d[i, j], 0.0) ** 2))


@register_loss("test_contrastive", replace=True)
def contrastive(embeddings, labels, margin=0.7):
    d2 = tf.maximum(tf.reduce_sum(tf.square(embeddings[:, None] - embeddings[None]), -1), 1e-12)
    same = tf.cast(tf.equal(labels[:, None], labels[None]), embeddings.dtype)
    pair = same * d2 + (1 - same) * tf.square(tf.nn.relu(margin - tf.sqrt(d2)))
    upper = tf.linalg.band_part(tf.ones_like(d2), 0, -1) - tf.eye(tf.shape(d2)[0])
    return tf.reduce_sum(pair * upper) / tf.reduce_sum(upper)


@register_miner("test_first", replace=True)
def first_triplets(embeddings, labels, seed):
    """Positive: the first other index of the anchor's class; negative: the first of another."""
    labels = tf.reshape(labels, [-1])
    same = tf.equal(labels[:, None], labels[None])
    others = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool)))
    positives = tf.argmax(tf.cast(others, tf.int32), -1, output_type=tf.int32)
    negatives = tf.argmax(tf.cast(tf.logical_not(same), tf.int32), -1, output_type=tf.int32)
    anchors = tf.range(tf.shape(labels)[0], dtype=tf.int32)
    return anchors, positives, negatives, tf.ones_like(anchors, tf.float32)


def triplet_margin_numpy(x, triplets, margin):
    d = lambda a, b: np.sqrt(np.sum((x[a] - x[b]) ** 2) + 1e-8)  # noqa: E731
    return np.mean([max(d(a, p) - d(a, n) + margin, 0.0) for a, p, n in triplets])


def _triplets(miner, x, labels):
    a, p, n, valid = (t.numpy() for t in registry.MINERS[miner].fn(
        tf.constant(x), tf.constant(labels), SEED, **registry.MINERS[miner].args_from(Config())))
    assert valid.all()
    return list(zip(a, p, n))


def test_random_miner_draws_a_positive_and_a_negative_per_anchor():
    x, labels = _batch()
    triplets = _triplets("random", x, labels)
    assert [a for a, _, _ in triplets] == list(range(len(labels)))
    for a, p, n in triplets:
        assert p != a and labels[p] == labels[a] and labels[n] != labels[a]


@pytest.mark.parametrize("miner", ["distance", "random", "test_first"])
@pytest.mark.parametrize("loss", ["margin", "triplet_margin"])
def test_any_registered_miner_feeds_any_triplet_loss(loss, miner):
    cfg = Config(loss=loss, miner=miner, loss_margin_margin=0.3, loss_triplet_margin=0.4,
                 loss_margin_beta=1.1).validate()
    x, labels = _batch(3)
    beta = np.random.default_rng(1).uniform(0.9, 1.3, 4)
    got = registry.build_loss(loss, miner, cfg)(tf.constant(x), tf.constant(labels), SEED,
                                                {"beta": tf.constant(beta)}).numpy()
    triplets = _triplets(miner, x, labels)
    want = (ref.margin_loss(x, labels, beta, triplets, 0.3) if loss == "margin"
            else triplet_margin_numpy(x, triplets, 0.4))
    assert got == pytest.approx(want, rel=1e-10)


def test_a_miner_needs_a_triplet_loss_and_names_are_checked():
    with pytest.raises(ConfigError, match="--miner=random needs a triplet loss"):
        Config(loss="multisimilarity", miner="random").validate()
    with pytest.raises(ConfigError, match="--miner='nope': unknown miner"):
        Config(miner="nope").validate()
    with pytest.raises(ValueError, match="registered already"):
        register_loss("margin")(contrastive)


def test_a_registered_loss_trains_the_discriminative_head():
    """One fit step: the logged loss is the numpy contrastive loss of the embeddings it saw."""
    cfg = Config(backbone="tiny", backbone_weights="none", bs=8, embed_dim=8, seed=3, lr=1e-3,
                 diva_features=["discriminative"], diva_rho_decorrelation=[],
                 loss="test_contrastive").validate()
    keras.utils.set_random_seed(0)
    t = DiVATrainer(cfg, 4, batch_size=8, objective=cfg, seed=cfg.seed)
    t.compile(optimizer=keras.optimizers.SGD(0.5))
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    labels = np.repeat(np.arange(4), 2).astype("int32")
    emb = t.embedder(images, training=False)["discriminative"].numpy()
    history = t.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=1, steps_per_epoch=1,
                    verbose=0)
    want = contrastive_numpy(emb, labels, 0.7)
    assert history.history["discriminative"][0] == pytest.approx(want, rel=1e-5)
    assert t.embedder(images, training=False)["discriminative"].numpy() != pytest.approx(emb)


USER_MODULE = textwrap.dedent('''
    import tensorflow as tf
    import diva_tf

    @diva_tf.register_loss("user_spread")
    def spread(embeddings, labels):
        """Mean cosine similarity of every pair (pushes the embeddings apart)."""
        return tf.reduce_mean(tf.matmul(embeddings, embeddings, transpose_b=True))
''')


def test_user_modules_flag_registers_a_loss_for_the_command_line(tmp_path):
    from synthetic import make_folder_dataset

    (tmp_path / "my_losses.py").write_text(USER_MODULE)
    data = make_folder_dataset(str(tmp_path / "shapes"), n_classes=8, per_class=4)
    args = [f"--dataset=folder", f"--data_dir={data}", f"--workdir={tmp_path / 'run'}",
            "--backbone=tiny", "--backbone_weights=none", "--resize=36", "--crop=32", "--bs=8",
            "--embed_dim=8", "--diva_features=discriminative", "--diva_rho_decorrelation=",
            "--n_epochs=1", "--steps_per_epoch=1", "--eval_every=0", "--strategy=default",
            "--loss=user_spread", "--user_modules=my_losses"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "diva_tf.train", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        last = [json.loads(line) for line in f][-1]
    # the mean cosine similarity of a batch of unit vectors, diagonal included: in (1/B, 1]
    assert 1 / 8 < last["train/discriminative"] <= 1.0
    r = subprocess.run([sys.executable, "-m", "diva_tf.train", *args[:-1]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.strip().endswith(
        "choose one of margin, triplet, triplet_margin, multisimilarity, proxy")
