"""Every use of diva_tf by the parity harness, in one place (update this module, nothing else,
when diva_tf's internals move): config and split loading, diva_tf's test view of images, its
sampler, the trainer and its variables, its miners replaced by fed triplets, one eager
`train_step`, its in-run evaluator and its per-step diagnostics.
"""

from __future__ import annotations

import json

import numpy as np

from diva_tf.config import Config
from diva_tf.data import load_splits

__all__ = ["Config", "load_splits", "load_config", "split_lists", "configure_threads",
           "eval_views", "epoch_batches", "build_trainer", "feed_miners", "fill_queue", "train_step",
           "canonical_variables", "queue_of", "evaluator", "restore_best_validation",
           "step_statistics", "speed_trainer"]


def load_config(path: str, **overrides) -> Config:
    with open(path) as f:
        return Config.from_dict(json.load(f)).replace(**overrides).validate()


def split_lists(splits) -> dict:
    """{split: (image paths, labels)} of a diva_tf Splits, for the original's datasets."""
    out = {"train": splits.train, "test": splits.test}
    if splits.val is not None:
        out["val"] = splits.val
    return {k: (list(s.images), np.asarray(s.labels)) for k, s in out.items()}


def configure_threads(n: int) -> None:
    """TensorFlow intra/inter-op threads (before any op runs)."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)


def eval_views(split, cfg) -> tuple[np.ndarray, np.ndarray]:
    """diva_tf's evaluation view (resize + centre crop) of every image of a split, in split
    order: float32 [N, crop, crop, 3] in 0..255, and the labels."""
    from diva_tf.data import eval_dataset
    images, labels = [], []
    for x, y in eval_dataset(split, cfg, cfg.eval_batch_size):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def epoch_batches(cfg, labels, epoch: int, steps: int) -> np.ndarray:
    """[steps, B] image indices of diva_tf's sampler for (cfg.seed, epoch)."""
    return cfg.sampler(cfg.seed, cfg.steps_per_epoch).epoch_indices(np.asarray(labels), epoch, steps)


def build_trainer(cfg, num_classes: int):
    import tensorflow as tf  # noqa: F401  (registers the TF backend before keras builds)
    from diva_tf.training.trainer import DiVATrainer
    trainer = DiVATrainer(cfg, num_classes, batch_size=cfg.bs, objective=cfg, seed=cfg.seed)
    trainer.compile(optimizer=cfg, jit_compile=cfg.jit_compile)
    return trainer


def feed_miners(feed: dict) -> None:
    """Replace diva_tf's three miners by functions returning feed[task] = (anchors, positives,
    negatives) (all valid). Call before `build_trainer`: the discriminative margin loss binds its
    miner when the objective is built."""
    import tensorflow as tf
    from diva_tf.objectives import miners

    def fixed(task):
        def miner(*args, **kwargs):
            a, p, n = (tf.constant(np.asarray(x, np.int32)) for x in feed[task])
            return a, p, n, tf.ones(a.shape, tf.float32)
        return miner

    miners.distance_weighted_triplets = fixed("discriminative")
    miners.shared_permuted_triplets = fixed("shared")
    miners.intra_random_triplets = fixed("intra")


def fill_queue(trainer, view1_batches) -> None:
    trainer.fill_queue((v, v, None) for v in view1_batches)


def train_step(trainer, view1, view2, labels) -> tuple[dict, dict]:
    """One eager `DiVATrainer.train_step`; returns ({variable id: loss gradient without the coupled
    L2}, {term: value}) as seen inside that step."""
    import tensorflow as tf
    seen = {}
    compute = trainer.compute_gradients

    def capture(*args):
        seen["out"] = compute(*args)
        return seen["out"]

    object.__setattr__(trainer, "compute_gradients", capture)
    try:
        trainer.train_step((tf.constant(view1), tf.constant(view2), tf.constant(labels)))
    finally:
        object.__delattr__(trainer, "compute_gradients")
    grads, total, terms, _ = seen["out"]
    out = {}
    for group, (g, variables) in grads.items():
        decay = trainer.coupled_decay(group)
        for gi, v in zip(g, variables):
            out[id(v)] = np.asarray(gi) - np.float32(decay) * v.numpy()
    return out, {"loss": float(total), **{k: float(v) for k, v in terms.items()}}


def _backbone(model):
    import keras
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def _backbone_variables(model) -> dict:
    """{torch state-dict name: (keras variable, layout converter)} of a model's Lite backbone."""
    from diva_tf.model.backbones import efficientnet_lite as lite

    out = {}
    for layer in _backbone(model).layers:
        for attr, name in (lite._torch_names(layer) or {}).items():
            out[name] = (getattr(layer, attr),
                         lambda value, layer=layer, attr=attr: lite._to_keras(layer, attr, value))
    return out


def canonical_variables(trainer, torch_arrays: dict) -> dict:
    """{canonical name: (keras variable, torch array in that variable's layout)} for the names in
    `torch_arrays` (torch layout): backbone/<lite name>, key_backbone/<lite name>,
    head/<head>/{weight,bias}, key_head/..., beta/<task>, regressor/<dir>/<index>.{weight,bias}."""
    backbones = {"backbone": _backbone_variables(trainer.embedder)}
    if getattr(trainer, "use_keys", False):
        backbones["key_backbone"] = _backbone_variables(trainer.key_encoder)
    out = {}
    for name, value in torch_arrays.items():
        kind, _, rest = name.partition("/")
        if kind in backbones:
            var, to_keras = backbones[kind][rest]
            out[name] = (var, to_keras(value))
        elif kind in ("head", "key_head"):
            model = trainer.embedder if kind == "head" else trainer.key_encoder
            head, attr = rest.split("/")
            layer = model.get_layer(f"head_{head}")
            out[name] = ((layer.kernel, value.T) if attr == "weight" else (layer.bias, value))
        elif kind == "beta":
            out[name] = (trainer.objective.betas[rest], value)
        elif kind == "regressor":
            direction, param = rest.split("/")
            index, attr = param.split(".")
            layer = trainer.objective.regressors[direction].layers[int(index)]
            out[name] = ((layer.kernel, value.T) if attr == "weight" else (layer.bias, value))
        else:
            raise KeyError(f"no diva_tf variable for {name!r}")
    return out


def queue_of(trainer):
    return trainer.queue.numpy() if getattr(trainer, "use_keys", False) else None


def evaluator(cfg, splits, embed_fn):
    """diva_tf's in-run Evaluator (its eval views, heads, combinations, metrics and test-split rule)
    embedding with `embed_fn(images 0..255 NHWC) -> {head: [n, d]}` instead of a Keras model."""
    from diva_tf.evaluation.in_run import Evaluator
    ev = Evaluator(splits, cfg.diva_features, cfg, cfg, cfg.dataset)
    ev.embed_function = lambda model: embed_fn
    return ev


def restore_best_validation(ev, records: list[dict]) -> None:
    """The evaluator's best validation R@1 per embedding after `records` (a resumed run)."""
    for r in records:
        for key, value in r.items():
            if key.startswith("val/") and key.endswith("/recall@1"):
                ev._best_val[key] = max(value, ev._best_val.get(key, -1.0))


def step_statistics(cfg, embeddings: dict, keys=None, queue=None, regressors=None) -> dict:
    """diva_tf's per-step diagnostics (DaNCE logits, zero-loss fraction, decorrelation C) of one
    step of any implementation: numpy embeddings {head: [B, d]}, keys [B, d], queue [M, d] and
    {(source, target): callable regressor}."""
    import tensorflow as tf
    from diva_tf.objectives import diagnostics
    from diva_tf.objectives.losses import SELF_SUPERVISED_LOSSES

    embs = {k: tf.constant(v, tf.float32) for k, v in embeddings.items()}
    stats = {}
    if keys is not None:
        stats.update(diagnostics.dance_statistics(
            embs["selfsimilarity"], tf.constant(keys, tf.float32), tf.constant(queue, tf.float32),
            cfg.diva_moco_temperature, cfg.diva_moco_lower_cutoff, cfg.diva_moco_upper_cutoff,
            cfg.diva_fixed, **SELF_SUPERVISED_LOSSES[cfg.diva_ssl]))
    if regressors:
        stats.update(diagnostics.decorrelation_statistics(embs, regressors))
    return {k: float(v) for k, v in stats.items()}


def speed_trainer(backbone: str, image_size: int, bs: int, config_path: str):
    """(trainer, compiled one-step function, batch) for timing diva_tf's train step on a fixed
    in-memory batch: the committed DiVA emoji config with another backbone / size / batch."""
    import tensorflow as tf
    weights = "imagenet" if backbone.startswith("efficientnet_lite") else "none"
    cfg = load_config(config_path, backbone=backbone, backbone_weights=weights, crop=image_size,
                      resize=image_size, bs=bs, data_dir="")
    trainer = build_trainer(cfg, num_classes=bs // 2)
    rng = np.random.RandomState(0)
    batch = (tf.constant(rng.uniform(0, 255, (bs, image_size, image_size, 3)).astype("float32")),
             tf.constant(rng.uniform(0, 255, (bs, image_size, image_size, 3)).astype("float32")),
             tf.constant(np.repeat(np.arange(bs // 2), 2).astype("int32")))
    if trainer.use_keys:
        trainer.queue.assign(tf.math.l2_normalize(tf.random.normal(trainer.queue.shape, seed=1), -1))
    step = tf.function(trainer.train_step, jit_compile=bool(cfg.jit_compile))
    return trainer, step, batch
