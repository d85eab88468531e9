"""How different are a trained run's heads? Per-head and combined R@1 on a split, how often two
heads retrieve the same nearest neighbour, and how often at least one head is right (issue 12).

    python benchmarks/head_diversity.py --runs runs/a,runs/b [--split test|val] [--weights last|best]
        [--data_dir DIR] [--out table.md]

An ensemble of heads can only beat its best member when the heads err on different queries. For
every pair of heads this prints the fraction of queries whose first neighbour (self excluded) is
the same image under both heads, and the "oracle" R@1 (the query's first neighbour is of its class
under at least one of the heads), next to each head's R@1 and the equal-weight combination's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np


def first_neighbours(emb: np.ndarray) -> np.ndarray:
    """Index of each row's nearest other row (squared Euclidean, exact)."""
    from diva_tf.evaluation import nearest_neighbours

    ids = nearest_neighbours(emb, k=1)
    return np.asarray(ids).reshape(len(emb), -1)[:, 0]


def diversity(embs: dict, labels: np.ndarray, heads: list) -> dict:
    """R@1 per head and combined, pairwise first-neighbour agreement, union-of-heads R@1."""
    from diva_tf.evaluation import combine_heads

    nn = {h: first_neighbours(embs[h]) for h in heads}
    hit = {h: labels[nn[h]] == labels for h in heads}
    combined = first_neighbours(combine_heads(embs, heads, [1.0] * len(heads)))
    out = {"recall@1": {h: float(hit[h].mean()) for h in heads},
           "combined_recall@1": float((labels[combined] == labels).mean()),
           "any_head_recall@1": float(np.logical_or.reduce([hit[h] for h in heads]).mean()),
           "same_neighbour": {}}
    for a, b in itertools.combinations(heads, 2):
        out["same_neighbour"][f"{a}/{b}"] = float(np.mean(nn[a] == nn[b]))
    return out


def embed_run(workdir: str, split: str, which: str, data_dir: str = ""):
    from diva_tf import data
    from diva_tf.evaluation import embed_dataset
    from diva_tf.runs.run_folder import load_model

    model, cfg = load_model(workdir, which)
    cfg.data_dir = data_dir or cfg.data_dir
    splits = data.load_splits(cfg)
    part = getattr(splits, split)
    if part is None:
        raise SystemExit(f"{workdir}: no {split} split (trained without --val_classes_fraction?)")
    embs, labels = embed_dataset(lambda x: model(x, training=False),
                                 data.eval_dataset(part, cfg, cfg.eval_batch_size), verbose=False)
    return embs, labels, list(cfg.diva_features)


def table(results: dict) -> str:
    lines = ["| run | R@1 per head | combined (1,1,1,1) | any head right | same 1st neighbour, per head pair |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        heads = " ".join(f"{h[:5]} {100 * v:.1f}" for h, v in r["recall@1"].items())
        pairs = " ".join(f"{p.split('/')[0][:5]}/{p.split('/')[1][:5]} {100 * v:.0f}"
                         for p, v in r["same_neighbour"].items())
        lines.append(f"| {name} | {heads} | {100 * r['combined_recall@1']:.1f} | "
                     f"{100 * r['any_head_recall@1']:.1f} | {pairs} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="comma-separated workdirs of multi-head runs")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--weights", default="last", choices=("last", "best"))
    p.add_argument("--data_dir", default="", help="dataset folder (default: the run's own)")
    p.add_argument("--out", default="", help="also write the markdown table here")
    a = p.parse_args(argv)
    results = {}
    for d in (d for d in a.runs.split(",") if d):
        embs, labels, heads = embed_run(d, a.split, a.weights, a.data_dir)
        if len(heads) < 2:
            raise SystemExit(f"{d}: a single-head run has nothing to compare")
        results[os.path.basename(d.rstrip("/"))] = diversity(embs, np.asarray(labels), heads)
    md = table(results)
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md + f"\n\n{a.split} split, {a.weights} weights. Command: `python "
                    f"benchmarks/head_diversity.py {' '.join(sys.argv[1:])}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
