"""Trajectory parity from identical starting points (`run.py steps`).

The original diva_main.py runs one epoch of fixed batches (diva_tf's sampler, seed and epoch 0;
view 1 = diva_tf's evaluation view of each image, view 2 = its horizontal flip, so DaNCE has a
non-trivial positive; no random augmentation). Hooks inside that run drive diva_tf's
`DiVATrainer` on the same batches, one eager `train_step` per original optimizer step:

* start: diva_tf's heads and regressors get the original's initial weights (the Lite0 backbone
  weights are the same file in both), then its queue is filled from the same first batches;
* every step: the triplets the original's miners drew (its np.random draws) are fed to diva_tf's
  miners; before the original's Adam step, its loss terms and gradients are compared with
  diva_tf's, after it the parameters; the key encoder and queue after each EMA / enqueue.

Several diva_tf optimizers (e.g. adam, adam_torch) can follow the same original run: each gets
its own trainer. A name with the suffix `+ulp` (e.g. adam_torch+ulp) is a control: that trainer's
initial head and regressor weights are moved by one float32 ulp (random sign), so its distance
from the original shows how far a float32-rounding-sized difference grows in the same steps.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zlib

import numpy as np

from benchmarks.parity import official, tf_side
from benchmarks.parity.report import TERMS


# ---- the original's state under the canonical names of tf_side.canonical_variables -----------
def _network_names(model, prefix: str, key_prefix: str) -> dict:
    """{canonical name: tensor} of a multifeature Network (parameters and BN statistics)."""
    lite = model.model.lite_names
    out = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("num_batches_tracked"):
            continue
        if ".last_linear." in name:
            head, attr = name.split(".last_linear.")[1].split(".")
            out[f"{key_prefix}/{head}/{attr}"] = tensor
        elif id(tensor) in lite:
            out[f"{prefix}/{lite[id(tensor)]}"] = tensor
    return out


def original_tensors(g: dict) -> dict:
    """{canonical name: torch tensor} of everything diva_tf also holds."""
    out = _network_names(g["model"], "backbone", "head")
    if "selfsimilarity" in g["criterion_dict"]:
        out.update(_network_names(g["selfsim_model"], "key_backbone", "key_head"))
    for task in ("discriminative", "shared", "intra"):
        if task in g["criterion_dict"]:
            out[f"beta/{task}"] = g["criterion_dict"][task].beta
    if "separation" in g["criterion_dict"]:
        for direction, reg in g["criterion_dict"]["separation"].regressors.items():
            for name, p in reg.named_parameters():
                out[f"regressor/{direction}/{name}"] = p
    return out


def group_of(name: str) -> str:
    kind, _, rest = name.partition("/")
    if kind in ("backbone", "beta"):
        return name if kind == "beta" else "backbone"
    if kind in ("key_backbone", "key_head"):
        return "key_encoder"
    return f"{kind}/{rest.split('/')[0]}"


def _is_statistic(name: str) -> bool:
    return name.endswith(("running_mean", "running_var"))


# ---- comparisons ------------------------------------------------------------------------------
def compare_arrays(pairs: dict, reference: dict | None = None) -> dict:
    """{group: max abs difference and max relative difference (to the group's max |original|);
    given `reference` (initial values, same layout) also the difference relative to the update
    so far: elementwise max |diff| / max |update| and norm ||diff|| / ||update||}."""
    acc = {}
    for name, (ours, theirs) in pairs.items():
        a = acc.setdefault(group_of(name), {"max_abs": 0.0, "scale": 0.0, "moved": 0.0,
                                            "diff_sq": 0.0, "moved_sq": 0.0, "worst": ""})
        diff = ours.astype(np.float64) - theirs
        if float(np.max(np.abs(diff))) > a["max_abs"]:
            a["worst"] = name
        a["max_abs"] = max(a["max_abs"], float(np.max(np.abs(diff))))
        a["scale"] = max(a["scale"], float(np.max(np.abs(theirs))))
        a["diff_sq"] += float(np.sum(np.square(diff)))
        if reference is not None:
            moved = theirs.astype(np.float64) - reference[name]
            a["moved"] = max(a["moved"], float(np.max(np.abs(moved))))
            a["moved_sq"] += float(np.sum(np.square(moved)))
    out = {}
    for group, a in sorted(acc.items()):
        out[group] = {"max_abs": a["max_abs"], "max_rel": a["max_abs"] / max(a["scale"], 1e-30),
                      "worst": a["worst"]}
        if reference is not None:
            out[group]["rel_to_update"] = a["max_abs"] / max(a["moved"], 1e-30)
            out[group]["norm_rel_to_update"] = np.sqrt(a["diff_sq"] / max(a["moved_sq"], 1e-60))
    return out


def compare_gradients(pairs: dict) -> dict:
    """{group: gradient norms of both sides, their relative difference, ||diff|| / ||original||,
    the max elementwise difference relative to the group's max |gradient|, and the elements whose
    sign differs (Adam's first steps move those by about +-lr either way): their fraction and the
    largest |original gradient| among them relative to the group's max}."""
    acc = {}
    for name, (ours, theirs) in pairs.items():
        a = acc.setdefault(group_of(name), {"ours": 0.0, "theirs": 0.0, "diff": 0.0, "max_abs": 0.0,
                                            "scale": 0.0, "n": 0, "flips": 0, "flip_max": 0.0})
        a["ours"] += float(np.sum(np.square(ours, dtype=np.float64)))
        a["theirs"] += float(np.sum(np.square(theirs, dtype=np.float64)))
        a["diff"] += float(np.sum(np.square(ours.astype(np.float64) - theirs)))
        a["max_abs"] = max(a["max_abs"], float(np.max(np.abs(ours - theirs))))
        a["scale"] = max(a["scale"], float(np.max(np.abs(theirs))))
        flipped = np.sign(ours) * np.sign(theirs) < 0
        a["n"] += ours.size
        a["flips"] += int(np.sum(flipped))
        if flipped.any():
            a["flip_max"] = max(a["flip_max"], float(np.max(np.abs(theirs[flipped]))))
    out = {}
    for group, a in sorted(acc.items()):
        n_ours, n_theirs = np.sqrt(a["ours"]), np.sqrt(a["theirs"])
        scale = max(a["scale"], 1e-30)
        out[group] = {"norm_diva_tf": n_ours, "norm_original": n_theirs,
                      "norm_rel": abs(n_ours - n_theirs) / max(n_theirs, 1e-30),
                      "diff_norm_rel": np.sqrt(a["diff"]) / max(n_theirs, 1e-30),
                      "max_rel": a["max_abs"] / scale, "sign_flip_fraction": a["flips"] / a["n"],
                      "sign_flip_max_rel": a["flip_max"] / scale}
    return out


def compare_terms(ours: dict, theirs: dict) -> dict:
    return {k: {"diva_tf": ours[k], "original": theirs[k], "abs": abs(ours[k] - theirs[k]),
                "rel": abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-30)}
            for k in TERMS if k in theirs and k in ours}


def one_ulp(name: str, value: np.ndarray) -> np.ndarray:
    """Heads and regressors one float32 ulp away in a random direction (the same for a head and
    its key-encoder copy); betas unchanged."""
    if name.startswith("beta/"):
        return value
    rng = np.random.RandomState(zlib.crc32(name.replace("key_", "").encode()))
    value = np.asarray(value, np.float32)
    return np.nextafter(value, (np.sign(rng.randn(*value.shape)) * np.inf).astype(np.float32))


class RecordingMiner:
    """Wraps one of the original's batch miners: its triplets also go to feed[task]."""

    def __init__(self, miner, task: str, feed: dict):
        self.miner, self.task, self.feed, self.name = miner, task, feed, miner.name

    def __call__(self, batch, labels):
        triplets = self.miner(batch, labels)
        self.feed[self.task] = np.asarray(triplets, np.int64).reshape(-1, 3).T
        return triplets


# ---- the run ----------------------------------------------------------------------------------
class StepParity:
    """The hooks of one original run and the diva_tf trainers following it."""

    def __init__(self, cfg, optimizers, batches, view1, view2, labels, num_classes):
        self.cfg, self.batches = cfg, batches
        self.view1, self.view2, self.labels = view1, view2, labels
        self.feed = {}
        tf_side.feed_miners(self.feed)
        self.trainers = {o: tf_side.build_trainer(cfg.replace(optimizer=o.split("+")[0]), num_classes)
                         for o in optimizers}
        self.records = {o: {"steps": []} for o in optimizers}
        self.initial = None
        self.g = None

    def _pairs(self, trainer, arrays: dict) -> dict:
        return {n: (var.numpy(), value)
                for n, (var, value) in tf_side.canonical_variables(trainer, arrays).items()}

    def _initial(self, trainer, names) -> dict:
        """The initial values of `names` in diva_tf's layout."""
        return {n: value for n, (_, value) in tf_side.canonical_variables(
            trainer, {n: self.initial[n] for n in names}).items()}

    def _compare_moved(self, trainer, arrays: dict) -> dict:
        return compare_arrays(self._pairs(trainer, arrays), self._initial(trainer, arrays))

    def _arrays(self, names=None, grads=False) -> dict:
        tensors = original_tensors(self.g)
        out = {}
        for n, t in tensors.items():
            if names is not None and not names(n):
                continue
            if grads:
                if t.grad is not None:
                    out[n] = t.grad.detach().numpy().copy()
            else:
                out[n] = t.detach().numpy().copy()
        return out

    def start(self, g, epoch, loader):
        """Before the first training step: copy initial weights, fill diva_tf's queue, hooks."""
        self.g = g
        arrays = self._arrays()
        n_keys = self.cfg.diva_moco_n_key_batches
        for o, trainer in self.trainers.items():
            for name, (var, value) in tf_side.canonical_variables(trainer, arrays).items():
                if not name.startswith(("backbone/", "key_backbone/")):
                    var.assign(one_ulp(name, value) if o.endswith("+ulp") else value)
            if trainer.use_keys:
                tf_side.fill_queue(trainer, [self.view1[b] for b in self.batches[:n_keys]])
            self.records[o]["initial"] = {
                "variables": compare_arrays(self._pairs(trainer, arrays)),
                **self._queue_record(trainer)}
        self.initial = {n: v for n, v in arrays.items() if not _is_statistic(n)}
        for task in ("discriminative", "shared", "intra"):
            crit = g["criterion_dict"].get(task)
            if crit is not None:
                crit.batchminer = RecordingMiner(crit.batchminer, task, self.feed)
        g["optimizer"].register_step_pre_hook(self.before_step)
        g["optimizer"].register_step_post_hook(self.after_step)
        return loader

    def _queue_record(self, trainer) -> dict:
        crit = self.g["criterion_dict"].get("selfsimilarity")
        if crit is None:
            return {}
        theirs, ours = crit.memory_queue.detach().numpy(), tf_side.queue_of(trainer)
        return {"queue": {"max_abs": float(np.max(np.abs(ours - theirs)))}}

    def _key_state(self, trainer) -> dict:
        arrays = self._arrays(lambda n: n.startswith(("key_backbone/", "key_head/"))
                              and not _is_statistic(n))
        if not arrays:
            return {}
        return {**self._compare_moved(trainer, arrays), **self._queue_record(trainer)}

    def before_step(self, optimizer, args, kwargs):
        i = self.g["i"]
        idx = self.batches[i]
        theirs_terms = official.original_terms(self.g)
        theirs_grads = self._arrays(lambda n: not _is_statistic(n), grads=True)
        for o, trainer in self.trainers.items():
            keys_before = self._key_state(trainer)  # after the previous step's EMA and enqueue
            if keys_before and i > 0:
                self.records[o]["steps"][-1]["key_encoder_after"] = keys_before
            t0 = time.time()
            grads, terms = tf_side.train_step(trainer, self.view1[idx], self.view2[idx],
                                              self.labels[idx])
            by_name = tf_side.canonical_variables(trainer, theirs_grads)
            pairs = {n: (grads[id(var)], value) for n, (var, value) in by_name.items()}
            self.records[o]["steps"].append({
                "step": i + 1, "seconds_diva_tf": time.time() - t0,
                "terms": compare_terms(terms, theirs_terms),
                "gradients": compare_gradients(pairs), "_terms": terms})
        for o in self.trainers:  # a +ulp control against its unperturbed diva_tf twin
            if o.endswith("+ulp"):
                twin = self.records[o.split("+")[0]]["steps"][-1]
                self.records[o]["steps"][-1]["vs_twin_terms"] = compare_terms(
                    self.records[o]["steps"][-1]["_terms"], twin["_terms"])

    def after_step(self, optimizer, args, kwargs):
        arrays = self._arrays(lambda n: not n.startswith("key_") and not _is_statistic(n))
        for o, trainer in self.trainers.items():
            self.records[o]["steps"][-1]["parameters"] = self._compare_moved(trainer, arrays)
        for o, trainer in self.trainers.items():
            if o.endswith("+ulp"):
                twin = self.trainers[o.split("+")[0]]
                ours = tf_side.canonical_variables(trainer, arrays)
                theirs = tf_side.canonical_variables(twin, arrays)
                self.records[o]["steps"][-1]["vs_twin_parameters"] = compare_arrays(
                    {n: (ours[n][0].numpy(), theirs[n][0].numpy()) for n in ours},
                    self._initial(twin, arrays))
        for o in self.trainers:
            self.records[o]["steps"][-1].pop("_terms", None)

    def finish(self, g):
        """diva_main.py's end-of-epoch evaluation call: the last step's key encoder and queue."""
        for o, trainer in self.trainers.items():
            state = self._key_state(trainer)
            if state:
                self.records[o]["steps"][-1]["key_encoder_after"] = state
        return {"parity/steps": float(self.g["i"] + 1)}


def summarise(steps: list[dict]) -> dict:
    """Worst value over the steps of every compared quantity."""
    out = {}

    def worst(section, key, field):
        values = [s[section][key][field] for s in steps if key in s.get(section, {})]
        return max(values) if values else None

    keys = lambda section: sorted({k for s in steps for k in s.get(section, {})})  # noqa: E731
    out["terms"] = {k: {"max_abs": worst("terms", k, "abs"), "max_rel": worst("terms", k, "rel")}
                    for k in keys("terms")}
    out["gradients"] = {k: {f: worst("gradients", k, f) for f in
                            ("norm_rel", "diff_norm_rel", "max_rel", "sign_flip_fraction",
                             "sign_flip_max_rel")} for k in keys("gradients")}
    fields = ("max_abs", "max_rel", "rel_to_update", "norm_rel_to_update")
    out["vs_twin_terms"] = {k: {"max_rel": worst("vs_twin_terms", k, "rel")} for k in keys("vs_twin_terms")}
    for section in ("parameters", "key_encoder_after", "vs_twin_parameters"):
        out[section] = {k: {f: worst(section, k, f) for f in fields
                            if any(f in s.get(section, {}).get(k, {}) for s in steps)}
                        for k in keys(section)}
    return out


def run(official_dir: str, config_path: str, data_dir: str, n_steps: int, optimizers,
        threads: int) -> dict:
    """One original run of `n_steps` fixed batches followed by diva_tf with each optimizer."""
    torch = official.require_torch()
    torch.set_num_threads(threads)
    tf_side.configure_threads(threads)
    cfg = tf_side.load_config(config_path, data_dir=data_dir)
    if "selfsimilarity" in cfg.diva_features and n_steps < cfg.diva_moco_n_key_batches:
        raise official.ParityError(f"--steps={n_steps}: the queue is filled from the first "
                                   f"{cfg.diva_moco_n_key_batches} batches; give at least that many")
    splits = tf_side.load_splits(cfg)
    view1, labels = tf_side.eval_views(splits.train, cfg)
    view2 = np.ascontiguousarray(view1[:, :, ::-1])
    batches = tf_side.epoch_batches(cfg, labels, epoch=0, steps=n_steps)
    parity = StepParity(cfg, optimizers, batches, view1, view2, labels, splits.train.num_classes)
    lists = tf_side.split_lists(splits)

    def datasets_select(base_cls, opt):
        train = base_cls(official.image_dict(*lists["train"]), opt)
        out = official.emoji_datasets(base_cls, opt, lists, cfg.crop)
        out["training"] = official.FixedViews(view1, view2, labels, train)
        return out

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        official.run_main(
            official_dir, official.original_argv(cfg.to_dict(), tmp, n_epochs=1), backbone="lite0",
            datasets_select=datasets_select, on_training_epoch=parity.start, evaluate=parity.finish,
            sampler_select=lambda *a, **k: official.FixedSampler(batches))
    return {"config": os.path.relpath(config_path), "steps": n_steps, "threads": threads,
            "seconds": time.time() - t0, "batch_indices_sha": _sha(batches),
            "runs": {o: {**r, "summary": summarise(r["steps"])} for o, r in parity.records.items()}}


def _sha(array) -> str:
    import hashlib
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()[:12]


def write(result: dict, out_json: str) -> None:
    os.makedirs(os.path.dirname(out_json) or ".", exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
