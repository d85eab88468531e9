"""Optimizer groups and schedules (algorithm.md 5.1): coupled L2 Adam, per-epoch step decay, cosine."""

import keras
import numpy as np
import tensorflow as tf

from diva_tf.config import Config
from diva_tf.training.optimizers import ADAM_EPSILON, OPTIMIZERS, add_coupled_l2, optimizers_of
from diva_tf.training.schedules import EpochClock, EpochCosineDecay, EpochStepDecay


def _torch_adam_l2(w, grads, lr, decay, eps=1e-8, b1=0.9, b2=0.999):
    """torch.optim.Adam(weight_decay=decay) written out: L2 added to the gradient, then Adam."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g + decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        w = w - lr * mhat / (np.sqrt(vhat) + eps)
    return w


def test_network_group_is_adam_with_coupled_l2():
    cfg = Config(lr=1e-2, decay=0.1)
    opt = optimizers_of(cfg)["network"]
    assert opt.epsilon == ADAM_EPSILON
    rng = np.random.RandomState(0)
    w0 = rng.randn(5)
    grads = [rng.randn(5) for _ in range(4)]
    var = tf.Variable(w0, dtype=tf.float64)
    for g in grads:
        opt.apply(add_coupled_l2([tf.constant(g)], [var], cfg.decay), [var])
    # Keras adds eps to the uncorrected sqrt(v), torch to the corrected one: an effective eps of
    # 1e-8 / sqrt(1 - 0.999^t), far below |g| ~ 1 here; compare to the torch rule.
    np.testing.assert_allclose(var.numpy(), _torch_adam_l2(w0, grads, 1e-2, 0.1), rtol=1e-6)


def test_step_decay_is_per_epoch_of_the_clock_for_every_group():
    cfg = Config(lr=1.0, loss_margin_beta_lr=0.5, diva_decorrnet_lr=0.25, tau=[2, 4], gamma=0.1)
    clock = EpochClock()
    opts = optimizers_of(cfg, clock)
    for name, base in [("network", 1.0), ("beta", 0.5), ("regressor", 0.25)]:
        sched = opts[name]._learning_rate
        got = []
        for epoch in range(6):
            clock.epoch.assign(epoch)
            got += [float(sched(step)) for step in (0, 7, 1000)]  # the optimizer step does not matter
        expect = [base * 0.1 ** sum(e >= t for t in (2, 4)) for e in range(6) for _ in range(3)]
        np.testing.assert_allclose(got, expect, rtol=1e-6)


def test_cosine_schedule_closed_form_ends_at_the_clocks_epoch_count():
    clock = EpochClock()
    s = EpochCosineDecay(2.0, warmup_epochs=2, clock=clock)
    for total in (10, 4):
        clock.epochs.assign(total)
        epochs = np.arange(total)
        expect = np.where(epochs < 2, 2.0 * (epochs + 1) / 2,
                          2.0 * 0.5 * (1 + np.cos(np.pi * (epochs - 2) / (total - 2))))
        got = []
        for e in epochs:
            clock.epoch.assign(e)
            got.append(float(s(0)))
        np.testing.assert_allclose(got, expect, rtol=1e-5)
    assert EpochStepDecay.from_config(EpochStepDecay(1.0, [1], 0.5).get_config()).milestones == [1]


def test_adamw_option_is_decoupled():
    opts = optimizers_of(Config(optimizer="adamw", decay=0.01))
    assert isinstance(opts["network"], keras.optimizers.AdamW) and opts["network"].weight_decay == 0.01
    assert not OPTIMIZERS["adamw"].coupled_decay and OPTIMIZERS["adam"].coupled_decay
    assert all(type(opts[g]) is keras.optimizers.Adam for g in ("beta", "regressor", "proxy"))


def test_adam_torch_matches_torch_rule_where_keras_adam_does_not():
    """adam_torch adds eps to the bias-corrected sqrt(v) as torch does; with gradients near eps
    (1e-8 here) Keras Adam's placement (eps / sqrt(1 - 0.999^t) effective) moves the weights
    measurably differently."""
    cfg = Config(optimizer="adam_torch", lr=1e-2, decay=0.1)
    rng = np.random.RandomState(1)
    w0 = rng.randn(6) * 1e-7
    grads = [rng.randn(6) * 1e-8 for _ in range(5)]
    expect = _torch_adam_l2(w0, grads, 1e-2, 0.1)
    got = {}
    for name in ("adam_torch", "adam"):
        opt = optimizers_of(cfg.replace(optimizer=name))["network"]
        var = tf.Variable(w0, dtype=tf.float64)
        for g in grads:
            opt.apply(add_coupled_l2([tf.constant(g)], [var], cfg.decay), [var])
        got[name] = var.numpy()
    update = np.max(np.abs(expect - w0))  # the learning rate is a float32 schedule value
    assert np.max(np.abs(got["adam_torch"] - expect)) < 1e-7 * update
    assert np.max(np.abs(got["adam"] - expect)) > 1e-3 * update


def test_adam_torch_also_for_the_groups_without_decay():
    opts = optimizers_of(Config(optimizer="adam_torch"))
    torch_adam = type(opts["network"])
    assert torch_adam is not keras.optimizers.Adam and OPTIMIZERS["adam_torch"].coupled_decay
    assert all(type(opts[g]) is torch_adam for g in ("beta", "regressor", "proxy"))
    rng = np.random.RandomState(2)
    w0, grads = rng.randn(4), [rng.randn(4) * 1e-6 for _ in range(3)]
    var = tf.Variable(w0, dtype=tf.float64)
    for g in grads:
        opts["beta"].apply([tf.constant(g)], [var])
    expect = _torch_adam_l2(w0, grads, 5e-4, 0.0)
    assert np.max(np.abs(var.numpy() - expect)) < 1e-7 * np.max(np.abs(expect - w0))
