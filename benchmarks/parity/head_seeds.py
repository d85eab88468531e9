"""Per-head validation R@1 of the DiVA row with the seed as the unit: the original vs diva_tf.

Epochs of one run are strongly correlated, so a per-epoch range check counts one seed many times.
Here each run is one number (its mean validation R@1 over epochs FIRST..40, and its untrained
epoch 0), and the implementations are compared by the difference of their seed means with a Welch
standard error. Reads only the committed metrics.jsonl files (no torch).

    python -m benchmarks.parity.head_seeds [--first 11] [--out benchmarks/results/parity]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.diva_vs_baseline import HEADS  # noqa: E402
from benchmarks.parity.report import load_runs  # noqa: E402
from benchmarks.parity.run import COMMITTED, RESULTS  # noqa: E402

KEYS = [f"val/{h}/recall@1" for h in HEADS] + ["val/combined[1,1,1,1]/recall@1"]


def seed_values(runs: dict, key: str, first: int) -> dict:
    """{seed: (epoch-0 value, mean over epochs >= first)}."""
    out = {}
    for seed, records in runs.items():
        late = [r[key] for r in records if r["epoch"] >= first and key in r]
        start = [r[key] for r in records if r["epoch"] == 0 and key in r]
        out[seed] = (start[0] if start else float("nan"), float(np.mean(late)))
    return out


def welch(a, b) -> dict:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
    diff = float(a.mean() - b.mean())
    return {"difference": diff, "se": se, "t": diff / se if se else float("nan")}


def build(first: int) -> dict:
    runs = {"original": load_runs(os.path.join(RESULTS, "runs"), "diva"),
            "diva_tf": load_runs(COMMITTED, "diva")}
    out = {"first_epoch": first, "heads": {}}
    for key in KEYS:
        per = {impl: seed_values(r, key, first) for impl, r in runs.items()}
        out["heads"][key] = {
            **{impl: {str(s): v for s, v in values.items()} for impl, values in per.items()},
            "late": welch([v[1] for v in per["original"].values()], [v[1] for v in per["diva_tf"].values()]),
            "epoch0": welch([v[0] for v in per["original"].values()], [v[0] for v in per["diva_tf"].values()])}
    return out


def markdown(result: dict) -> str:
    first = result["first_epoch"]
    lines = ["# DiVA heads, one number per seed: the original vs diva_tf", "",
             f"Written by `python -m benchmarks.parity.head_seeds --first {first}` from the committed "
             f"metrics.jsonl. Validation R@1 in points: per seed, the mean over epochs {first}-40 "
             "(and the untrained epoch 0); difference = original mean - diva_tf mean, ± Welch "
             "standard error, t = difference / se.", "",
             f"| head | original seeds, epochs {first}-40 | diva_tf seeds | difference | t | "
             "epoch 0: original | diva_tf | difference |", "|---|---|---|---|---|---|---|---|"]
    for key, r in result["heads"].items():
        def fmt(impl, i):
            return ", ".join(f"{100 * v[i]:.2f}" for v in r[impl].values())
        lines.append(f"| {key.split('/')[1]} | {fmt('original', 1)} | {fmt('diva_tf', 1)} | "
                     f"{100 * r['late']['difference']:+.2f} ± {100 * r['late']['se']:.2f} | "
                     f"{r['late']['t']:+.1f} | {fmt('original', 0)} | {fmt('diva_tf', 0)} | "
                     f"{100 * r['epoch0']['difference']:+.2f} ± {100 * r['epoch0']['se']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--first", type=int, default=11, help="first epoch of the per-seed mean")
    p.add_argument("--out", default=RESULTS, help="folder for head_seeds.{json,md} ('' = print only)")
    a = p.parse_args(argv)
    result = build(a.first)
    text = markdown(result)
    print(text, end="")
    if a.out:
        with open(os.path.join(a.out, "head_seeds.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(a.out, "head_seeds.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
