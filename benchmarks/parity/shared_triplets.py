"""The shared task's triplets (DiVA `--diva_sharing random`): the original's miner vs diva_tf's.

Feeds the same embeddings and labels (emoji layout: 112 = 56 classes x 2, 128-d unit vectors, random
and class-clustered) to the original's `batchminer/random_distance.py` (imported from the checkout)
and to `diva_tf.objectives.miners.shared_permuted_triplets`, many draws each, and compares the
triplet distributions with each other and with the closed form below. Also checks the margin loss
(beta of the anchor's true class) of both implementations on identical triplets.

    python -m benchmarks.parity.shared_triplets --official_dir DIR [--draws 400] [--batches 6]

Closed form (2 samples per class): the permuted labels pair every index with a uniformly random
other one (its positive), so P(positive = p | a) = 1 / (B - 1); the negative is drawn by the
sphere-distance weights w_aj among the remaining B - 2 indices:
P(negative = j | a) = 1 / (B - 1) * sum_{p not in {a, j}} w_aj / (W_a - w_ap), W_a = sum_{k != a} w_ak.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

RESULTS = os.path.join(REPO, "benchmarks", "results", "parity")
CLASSES, PER_CLASS, DIM = 56, 2, 128  # the committed emoji runs: bs 112, embed_dim 128 per head
LOWER_CUTOFF, MARGIN, BETA = 0.5, 0.2, 1.2
HIST_BINS = np.linspace(0.0, 2.0, 21)
# family -> (spread of a sample around its class centre, spread of class centres around a group
# centre, classes per group): how the embeddings of a batch are laid out on the sphere
FAMILIES = {
    "random": None,
    "classes_tight": (0.3, None, 1),     # classmates ~0.4 apart (below the 0.5 cutoff), classes ~1.4
    "classes_loose": (0.7, None, 1),     # classmates ~0.9 apart
    "grouped": (0.8, 0.3, 8),            # 7 groups of 8 close classes: structure shared across classes
}


# ---- embeddings ---------------------------------------------------------------------------------
def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_batch(family: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit rows [112, 128] and labels [112] (class k at rows 2k, 2k + 1)."""
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    spec = FAMILIES[family]
    if spec is None:
        x = rng.normal(size=(len(labels), DIM))
    else:
        sample_spread, class_spread, per_group = spec
        groups = _normalize(rng.normal(size=(CLASSES // per_group, DIM)))
        centres = groups[np.arange(CLASSES) // per_group]
        if class_spread is not None:
            centres = _normalize(centres + class_spread * rng.normal(size=centres.shape) / np.sqrt(DIM))
        x = centres[labels] + sample_spread * rng.normal(size=(len(labels), DIM)) / np.sqrt(DIM)
    return _normalize(x).astype(np.float32), labels


# ---- closed form --------------------------------------------------------------------------------
def sphere_weights(x, lower_cutoff=LOWER_CUTOFF):
    """w_ij of the distance-weighted miner (each row scaled by its maximum; w_ii = 0), float64."""
    x = np.asarray(x, np.float64)
    d = np.sqrt(np.maximum(2.0 - 2.0 * x @ x.T, 0.0))
    dc = np.maximum(d, lower_cutoff)
    dim = x.shape[1]
    log_w = (2.0 - dim) * np.log(dc) - 0.5 * (dim - 3.0) * np.log(1.0 - 0.25 * dc ** 2)
    np.fill_diagonal(log_w, -np.inf)
    return np.exp(log_w - log_w.max(axis=1, keepdims=True)), d


def shared_negative_probabilities(x) -> np.ndarray:
    """P(negative = j | anchor a) of the shared miner when every label occurs exactly twice."""
    w, _ = sphere_weights(x)
    b = len(w)
    off = 1.0 - np.eye(b)
    rest = w @ off                        # W_a - w_ap, [a, p], summed without cancellation
    inv = off / np.where(off > 0, rest, 1.0)
    per_j = inv @ off                     # sum over p not in {a, j}
    return w * per_j / (b - 1)


def expected(x, labels) -> dict:
    q = shared_negative_probabilities(x)
    _, d = sphere_weights(x)
    b = len(labels)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(b, dtype=bool)
    return {"pos_true_class": 1.0 / (b - 1),
            "neg_true_class": float((q * (same & off)).sum(axis=1).mean()),
            "d_ap_mean": float(d[off].mean()),
            "d_an_mean": float((q * d).sum(axis=1).mean()),
            "neg_probabilities": q}


# ---- the two miners -----------------------------------------------------------------------------
def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_modules(official_dir):
    """The original's shared miner class and margin criterion, imported from the checkout (they only
    import numpy and torch, so their files are loaded without the package __init__)."""
    miner = _load(os.path.join(official_dir, "batchminer", "random_distance.py"), "official_random_distance")
    margin = _load(os.path.join(official_dir, "criteria", "margin.py"), "official_margin")
    return miner, margin


def official_options():
    return argparse.Namespace(miner_distance_lower_cutoff=LOWER_CUTOFF, miner_distance_upper_cutoff=1.4,
                              n_classes=CLASSES, loss_margin_margin=MARGIN, loss_margin_nu=0.0,
                              loss_margin_beta_constant=False, loss_margin_beta=BETA,
                              loss_margin_beta_lr=5e-4)


def official_draws(miner, x, labels, seeds):
    """[draws, 3, T] triplets of the original miner, np.random seeded per draw."""
    import torch
    batch, lab = torch.from_numpy(x), torch.from_numpy(labels)
    out = []
    for s in seeds:
        np.random.seed(int(s))
        out.append(np.asarray(miner(batch, lab), np.int64).T)
    return np.stack(out)


def diva_tf_draws(x, labels, seeds):
    """[draws, 3, T] valid triplets of diva_tf's miner for seeds (s, 1)."""
    import tensorflow as tf
    from diva_tf.objectives import miners
    tf.get_logger().setLevel("ERROR")  # vectorized_map's while-loop fallback for the Philox op
    xs, ls = tf.constant(x), tf.constant(labels, tf.int32)
    seed_t = tf.stack([tf.constant(seeds, tf.int64), tf.ones([len(seeds)], tf.int64)], axis=1)
    a, p, n, v = tf.function(lambda s: tf.vectorized_map(
        lambda one: miners.shared_permuted_triplets(xs, ls, one, LOWER_CUTOFF), s))(seed_t)
    if not np.all(v.numpy() == 1.0):
        raise AssertionError("diva_tf marked a triplet invalid with 2 samples per class")
    return np.stack([a.numpy(), p.numpy(), n.numpy()], axis=1).astype(np.int64)


# ---- statistics ---------------------------------------------------------------------------------
def draw_stats(trips, x, labels) -> dict:
    """Per-draw quantities, each an array over draws."""
    a, p, n = trips[:, 0], trips[:, 1], trips[:, 2]
    d = np.sqrt(np.maximum(2.0 - 2.0 * x.astype(np.float64) @ x.T.astype(np.float64), 0.0))
    return {"triplets": np.full(len(trips), trips.shape[2], np.float64),
            "distinct_anchors": np.array([len(np.unique(t)) for t in a], np.float64),
            "distinct_negatives": np.array([len(np.unique(t)) for t in n], np.float64),
            "pos_true_class": (labels[p] == labels[a]).mean(axis=1),
            "neg_true_class": (labels[n] == labels[a]).mean(axis=1),
            "neg_is_positive": (n == p).mean(axis=1),
            "d_ap_mean": d[a, p].mean(axis=1),
            "d_an_mean": d[a, n].mean(axis=1),
            "d_an_below_cutoff": (d[a, n] < LOWER_CUTOFF).mean(axis=1),
            "margin_loss": np.array([numpy_margin_loss(x, labels, t) for t in trips])}


def numpy_margin_loss(x, labels, trip, beta=None):
    """The margin loss (beta of the anchor's true class) on one draw's triplets, float64."""
    beta = np.full(CLASSES, BETA) if beta is None else beta
    x = x.astype(np.float64)
    a, p, n = trip
    d_ap = np.sqrt(((x[a] - x[p]) ** 2).sum(1) + 1e-8)
    d_an = np.sqrt(((x[a] - x[n]) ** 2).sum(1) + 1e-8)
    b = beta[labels[a]]
    pos, neg = np.maximum(d_ap - b + MARGIN, 0), np.maximum(b - d_an + MARGIN, 0)
    k = np.sum((pos > 0) | (neg > 0))
    return float((pos + neg).sum() / k) if k else 0.0


def negative_tv(trips, q) -> float:
    """Mean over anchors of the total variation between the empirical negative frequencies and q."""
    b = q.shape[0]
    freq = np.zeros_like(q)
    for t in trips:
        np.add.at(freq, (t[0], t[2]), 1.0)
    freq /= len(trips)
    return float(0.5 * np.abs(freq - q).sum(axis=1).mean())


def sampling_tv(q, draws, rng, repeats=20) -> float:
    """The same total variation for exact multinomial samples of q (what sampling noise alone gives)."""
    tvs = []
    for _ in range(repeats):
        freq = np.stack([rng.multinomial(draws, row / row.sum()) for row in q]) / draws
        tvs.append(0.5 * np.abs(freq - q).sum(axis=1).mean())
    return float(np.mean(tvs))


def margin_loss_agreement(margin_module, miner_trips, x, labels, rng) -> dict:
    """The original's margin criterion and diva_tf's margin_loss on identical triplets, with class
    betas spread around 1.2 so that a lookup by the permuted label would show."""
    import tensorflow as tf
    import torch
    from diva_tf.objectives import losses
    beta = (BETA + 0.2 * rng.standard_normal(CLASSES)).astype(np.float32)
    worst = 0.0
    for trip in miner_trips:
        fixed = [list(map(int, t)) for t in trip.T]
        criterion = margin_module.Criterion(official_options(), lambda batch, lab, f=fixed: f)
        with torch.no_grad():
            criterion.beta.copy_(torch.from_numpy(beta))
            ref = float(criterion(torch.from_numpy(x), torch.from_numpy(labels)))
        ones = tf.ones([trip.shape[1]])
        got = float(losses.margin_loss(tf.constant(x), tf.constant(labels, tf.int32), tf.constant(beta),
                                       tuple(tf.constant(t, tf.int32) for t in trip) + (ones,), MARGIN))
        true_beta = numpy_margin_loss(x, labels, trip, beta.astype(np.float64))
        worst = max(worst, abs(got - ref) / abs(ref), abs(true_beta - ref) / abs(ref))
    return {"draws": len(miner_trips), "max_relative_difference": worst}


def _mean_se(values):
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))


def compare(official_dir: str, families, batches: int, draws: int, seed: int) -> dict:
    miner_module, margin_module = official_modules(official_dir)
    miner = miner_module.BatchMiner(official_options())
    rng = np.random.default_rng(seed)
    out = {"layout": {"batch": CLASSES * PER_CLASS, "classes": CLASSES, "dim": DIM,
                      "lower_cutoff": LOWER_CUTOFF, "margin": MARGIN, "beta": BETA},
           "batches_per_family": batches, "draws_per_batch": draws, "seed": seed, "families": {}}
    for f, family in enumerate(families):
        per = {"official": {}, "diva_tf": {}, "expected": {}}
        tv = {"official": [], "diva_tf": [], "exact_sampling": []}
        hist = {"official": np.zeros(len(HIST_BINS) - 1), "diva_tf": np.zeros(len(HIST_BINS) - 1)}
        for k in range(batches):
            x, labels = make_batch(family, rng)
            seeds = np.arange(draws) + 100_000 * k + 10_000_000 * f
            trips = {"official": official_draws(miner, x, labels, seeds),
                     "diva_tf": diva_tf_draws(x, labels, seeds)}
            ref = expected(x, labels)
            for key in ("pos_true_class", "neg_true_class", "d_ap_mean", "d_an_mean"):
                per["expected"].setdefault(key, []).append(ref[key])
            d = np.sqrt(np.maximum(2.0 - 2.0 * x.astype(np.float64) @ x.T.astype(np.float64), 0.0))
            for impl, t in trips.items():
                for key, values in draw_stats(t, x, labels).items():
                    per[impl].setdefault(key, []).extend(values.tolist())
                tv[impl].append(negative_tv(t, ref["neg_probabilities"]))
                hist[impl] += np.histogram(d[t[:, 0], t[:, 2]].ravel(), HIST_BINS)[0]
            tv["exact_sampling"].append(sampling_tv(ref["neg_probabilities"], draws, rng))
            if k == 0:
                loss_check = margin_loss_agreement(margin_module, trips["official"][:20], x, labels, rng)
        result = {impl: {key: _mean_se(v) for key, v in stats.items()}
                  for impl, stats in per.items() if impl != "expected"}
        result["expected"] = {key: float(np.mean(v)) for key, v in per["expected"].items()}
        result["z_official_minus_diva_tf"] = {
            key: (result["official"][key][0] - result["diva_tf"][key][0])
            / max(np.hypot(result["official"][key][1], result["diva_tf"][key][1]), 1e-12)
            for key in result["official"]}
        result["negative_tv_vs_closed_form"] = {k: float(np.mean(v)) for k, v in tv.items()}
        result["d_an_histogram"] = {"bins": HIST_BINS.tolist(),
                                    **{k: (v / v.sum()).tolist() for k, v in hist.items()}}
        result["margin_loss_on_identical_triplets"] = loss_check
        out["families"][family] = result
        print(f"{family}: " + ", ".join(
            f"{key} {result['official'][key][0]:.4f} vs {result['diva_tf'][key][0]:.4f}"
            f" (z {result['z_official_minus_diva_tf'][key]:+.1f})"
            for key in ("pos_true_class", "neg_true_class", "d_an_mean", "margin_loss")), flush=True)
    return out


# ---- report -------------------------------------------------------------------------------------
ROWS = [("triplets per batch", "triplets"), ("distinct anchors", "distinct_anchors"),
        ("distinct negatives", "distinct_negatives"), ("positive of the anchor's true class", "pos_true_class"),
        ("negative of the anchor's true class", "neg_true_class"), ("negative = positive", "neg_is_positive"),
        ("mean d(anchor, positive)", "d_ap_mean"), ("mean d(anchor, negative)", "d_an_mean"),
        ("d(anchor, negative) < 0.5", "d_an_below_cutoff"), ("margin loss (beta 1.2)", "margin_loss")]


def markdown(result: dict, command: str) -> str:
    lines = ["# Shared-task triplets: the original's miner vs diva_tf's", "",
             f"Written by `{command}`. Batch of {result['layout']['batch']} ({result['layout']['classes']} "
             f"classes x 2), {result['layout']['dim']}-d unit vectors; per embedding family "
             f"{result['batches_per_family']} batches x {result['draws_per_batch']} draws per implementation "
             "(the same embeddings and labels for both). Values: mean ± standard error over draws; "
             "z = (original - diva_tf) / combined standard error; closed form: see the module docstring.", ""]
    for family, r in result["families"].items():
        lines += [f"## {family}", "", "| quantity | original | diva_tf | z | closed form |", "|---|---|---|---|---|"]
        for label, key in ROWS:
            o, t = r["official"][key], r["diva_tf"][key]
            exp = r["expected"].get(key)
            lines.append(f"| {label} | {o[0]:.4f} ± {o[1]:.4f} | {t[0]:.4f} ± {t[1]:.4f} | "
                         f"{r['z_official_minus_diva_tf'][key]:+.1f} | {'' if exp is None else f'{exp:.4f}'} |")
        tv = r["negative_tv_vs_closed_form"]
        h = r["d_an_histogram"]
        tvd = 0.5 * float(np.abs(np.array(h["official"]) - np.array(h["diva_tf"])).sum())
        lines += ["", f"Negative distribution per anchor, total variation from the closed form (mean over "
                  f"anchors and batches): original {tv['official']:.4f}, diva_tf {tv['diva_tf']:.4f}, exact "
                  f"multinomial samples of the same size {tv['exact_sampling']:.4f}. Histograms of "
                  f"d(anchor, negative) (bins of 0.1): total variation between the implementations {tvd:.4f}. "
                  "Margin loss on identical triplets (class betas 1.2 ± 0.2, true-class lookup): largest "
                  f"relative difference {r['margin_loss_on_identical_triplets']['max_relative_difference']:.1e} "
                  f"over {r['margin_loss_on_identical_triplets']['draws']} draws.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official_dir", default="",
                   help="checkout of Confusezius/ECCV2020_DiVA_MultiFeature_DML (e5713049)")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--batches", type=int, default=6, help="embedding batches per family")
    p.add_argument("--draws", type=int, default=400, help="miner draws per batch and implementation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=RESULTS, help="folder for shared_triplets.{json,md} ('' = print only)")
    a = p.parse_args(argv)
    from benchmarks.parity.official import ParityError, check_official_dir, require_torch
    try:
        official_dir = check_official_dir(a.official_dir)
        torch = require_torch()
        families = a.families.split(",")
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            raise ParityError(f"--families: unknown {unknown}; choose from {sorted(FAMILIES)}")
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import tensorflow as tf
    torch.set_num_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    start = time.time()
    result = compare(official_dir, families, a.batches, a.draws, a.seed)
    result["seconds"] = round(time.time() - start, 1)
    if a.out:
        command = (f"python -m benchmarks.parity.shared_triplets --official_dir DIR --batches {a.batches} "
                   f"--draws {a.draws} --seed {a.seed}")
        with open(os.path.join(a.out, "shared_triplets.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(a.out, "shared_triplets.md"), "w") as f:
            f.write(markdown(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
