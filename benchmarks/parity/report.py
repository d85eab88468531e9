"""Curve-parity report (`run.py report`): the original's runs (benchmarks/results/parity/runs)
against diva_tf's committed 3-seed runs of the same protocol, from whatever epochs exist.

Writes <out>/curves.json (per-epoch series of both implementations, per-epoch range checks,
validation-based selections, DiVA-minus-baseline gaps), <out>/curves.md and <out>/curves.png.
Selection is benchmarks/diva_vs_baseline.py's rule (best validation R@1 over epochs >= 1 and the
evaluated head weightings; test metrics there).
"""

from __future__ import annotations

import json
import os

from benchmarks.diva_vs_baseline import HEADS, mean_std, primary_name, read_metrics, select
from benchmarks.parity.run import ROWS

IMPLEMENTATIONS = ("diva_tf", "original")
TERMS = ("loss", "discriminative", "selfsimilarity", "shared", "intra", "decorrelation")
DANCE = ("dance_positive_logit", "dance_negative_logit", "dance_max_negative_logit",
         "dance_zero_loss_fraction")
CORRELATIONS = tuple(f"correlation_{h}_discriminative" for h in HEADS[1:])


def load_runs(folder: str, row: str) -> dict:
    """{seed: metrics records} of the runs <folder>/<row stem>_seed<k> that have a trained epoch."""
    stem, out = ROWS[row] + "_seed", {}
    if not os.path.isdir(folder):
        return out
    for name in sorted(os.listdir(folder)):
        if name.startswith(stem) and name[len(stem):].isdigit():
            records = read_metrics(os.path.join(folder, name))
            if any(r["epoch"] > 0 for r in records):
                out[int(name[len(stem):])] = records
    return out


def series_keys(row: str) -> list[str]:
    """The per-epoch quantities compared for a row."""
    if row == "baseline":
        return ["val/discriminative/recall@1", "train/loss", "train/discriminative",
                "beta_mean/discriminative"]
    return (["val/combined[1,1,1,1]/recall@1"] + [f"val/{h}/recall@1" for h in HEADS]
            + [f"train/{t}" for t in TERMS] + [f"train/{d}" for d in DANCE + CORRELATIONS]
            + [f"beta_mean/{t}" for t in ("discriminative", "shared", "intra")])


def by_epoch(runs: dict, key: str) -> dict:
    """{epoch: [value per seed]} of one quantity."""
    out = {}
    for records in runs.values():
        for r in records:
            if key in r:
                out.setdefault(r["epoch"], []).append(r[key])
    return out


def range_check(ours: dict, theirs: dict, key: str) -> dict:
    """Per trained epoch: diva_tf's min / mean / max over seeds, the original's values, whether
    every original value falls inside diva_tf's range and by how much the farthest one misses it
    (relative to the diva_tf mean); plus the count of epochs inside."""
    a, b = by_epoch(ours, key), by_epoch(theirs, key)
    rows = []
    for e in sorted(set(a) & set(b) - {0}):
        lo, hi, mean = min(a[e]), max(a[e]), sum(a[e]) / len(a[e])
        miss = max(max(lo - v, v - hi, 0.0) for v in b[e])
        rows.append({"epoch": e, "diva_tf_min": lo, "diva_tf_mean": mean, "diva_tf_max": hi,
                     "original": b[e], "inside": miss == 0.0, "outside_by": miss,
                     "outside_by_rel": miss / max(abs(mean), 1e-30)})
    diffs = [v - r["diva_tf_mean"] for r in rows for v in r["original"]]
    half = [(r["diva_tf_max"] - r["diva_tf_min"]) / 2 for r in rows]
    return {"epochs": rows, "inside": sum(r["inside"] for r in rows), "compared": len(rows),
            "max_outside_by_rel": max((r["outside_by_rel"] for r in rows), default=0.0),
            "mean_difference": sum(diffs) / len(diffs) if diffs else None,
            "diva_tf_mean_half_range": sum(half) / len(half) if half else None}


def last_test(records: list[dict]) -> dict:
    """Test R@1 of the primary embedding at the last epoch that has test metrics."""
    name = primary_name(records)
    r = max((r for r in records if f"test/{name}/recall@1" in r), key=lambda r: r["epoch"])
    return {"epoch": r["epoch"], "embedding": name, "recall@1": r[f"test/{name}/recall@1"]}


def summary(runs: dict) -> dict:
    per_seed = {s: {"selected": select(rec), "last": last_test(rec),
                    "epochs_done": max(r["epoch"] for r in rec)} for s, rec in runs.items()}
    return {"per_seed": per_seed,
            "selected_test_recall@1": mean_std([p["selected"]["recall@1"] for p in per_seed.values()]),
            "selected_val_recall@1": mean_std([p["selected"]["val_recall@1"] for p in per_seed.values()]),
            "last_test_recall@1": mean_std([p["last"]["recall@1"] for p in per_seed.values()])}


def gaps(sums: dict) -> dict:
    """DiVA minus baseline test R@1 at the selected and at the last epoch, from the rows'
    `summary`s: paired by seed where both rows have the seed, and as the difference of the row
    means."""
    if set(sums) != set(ROWS):
        return {}
    d, b = sums["diva"]["per_seed"], sums["baseline"]["per_seed"]
    seeds = sorted(set(d) & set(b))
    out = {}
    for when in ("selected", "last"):
        paired = [d[s][when]["recall@1"] - b[s][when]["recall@1"] for s in seeds]
        means = [sum(x[when]["recall@1"] for x in v.values()) / len(v) for v in (d, b)]
        out[when] = {"paired_mean_std": mean_std(paired), "paired": paired, "seeds": seeds,
                     "difference_of_means": means[0] - means[1],
                     "epochs": {row: {s: v[when]["epoch"] for s, v in sums[row]["per_seed"].items()}
                                for row in ROWS}}
    return out


def val_gap_by_epoch(runs: dict) -> dict:
    """{epoch: mean over seeds of DiVA combined[1,1,1,1] minus mean of baseline val R@1}."""
    d = by_epoch(runs["diva"], "val/combined[1,1,1,1]/recall@1")
    b = by_epoch(runs["baseline"], "val/discriminative/recall@1")
    return {e: sum(d[e]) / len(d[e]) - sum(b[e]) / len(b[e]) for e in sorted(set(d) & set(b)) if e > 0}


def build(runs_dir: str, diva_tf_runs: str) -> dict:
    runs = {"diva_tf": {row: load_runs(diva_tf_runs, row) for row in ROWS},
            "original": {row: load_runs(runs_dir, row) for row in ROWS}}
    out = {"sources": {"diva_tf": os.path.relpath(diva_tf_runs), "original": os.path.relpath(runs_dir)},
           "rows": {}, "gaps": {}, "val_gap_by_epoch": {}}
    sums = {impl: {row: summary(r) for row, r in runs[impl].items() if r} for impl in IMPLEMENTATIONS}
    for row in ROWS:
        entry = {impl: {"seeds": sorted(runs[impl][row]),
                        "epochs_done": {s: max(r["epoch"] for r in rec)
                                        for s, rec in runs[impl][row].items()}}
                 for impl in IMPLEMENTATIONS}
        if runs["original"][row] and runs["diva_tf"][row]:
            entry["range_checks"] = {k: range_check(runs["diva_tf"][row], runs["original"][row], k)
                                     for k in series_keys(row)}
            for impl in IMPLEMENTATIONS:
                entry[impl]["summary"] = sums[impl][row]
        out["rows"][row] = entry
    for impl in IMPLEMENTATIONS:
        out["gaps"][impl] = gaps(sums[impl])
        if all(runs[impl].values()):
            out["val_gap_by_epoch"][impl] = val_gap_by_epoch(runs[impl])
    return out, runs


def _fmt(ms) -> str:
    m, s = ms
    return "-" if m != m else f"{m:.4f} ± {s:.4f}"


def markdown(result: dict) -> str:
    lines = ["# Curve parity: the original DiVA code vs diva_tf (emoji, 64 px, Lite0)", "",
             "Written by `python -m benchmarks.parity.run report` from the runs that exist.", "",
             "| row | implementation | seeds (epochs done) | selected test R@1 | selected val R@1 | "
             "last-epoch test R@1 |", "|---|---|---|---|---|---|"]
    for row, entry in result["rows"].items():
        for impl in IMPLEMENTATIONS:
            e = entry[impl]
            done = ", ".join(f"{s} ({n})" for s, n in e["epochs_done"].items()) or "none"
            s = e.get("summary")
            cells = ([_fmt(s["selected_test_recall@1"]), _fmt(s["selected_val_recall@1"]),
                      _fmt(s["last_test_recall@1"])] if s else ["-"] * 3)
            lines.append(f"| {row} | {impl} | {done} | " + " | ".join(cells) + " |")
    lines += ["", "DiVA minus baseline test R@1 (paired by seed):", "",
              "| implementation | at the selected epoch | at the last epoch |", "|---|---|---|"]
    for impl, g in result["gaps"].items():
        cells = [_fmt(g[w]["paired_mean_std"]) + f" (seeds {g[w]['seeds']})" if w in g else "-"
                 for w in ("selected", "last")]
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    lines += ["", "Per trained epoch: does every original seed fall inside diva_tf's 3-seed range; the "
              "largest miss relative to diva_tf's mean; the original minus diva_tf's mean, averaged "
              "over epochs and seeds, next to half of diva_tf's own seed range (averaged):", "",
              "| row | quantity | inside / compared | largest miss | mean difference | diva_tf half range |",
              "|---|---|---|---|---|---|"]
    for row, entry in result["rows"].items():
        for key, check in entry.get("range_checks", {}).items():
            lines.append(f"| {row} | {key} | {check['inside']} / {check['compared']} | "
                         f"{100 * check['max_outside_by_rel']:.1f} % | {check['mean_difference']:+.4g} | "
                         f"{check['diva_tf_mean_half_range']:.4g} |")
    return "\n".join(lines) + "\n"


# (row, [quantities], title, log scale) of the panels after the two validation-R@1 bands and the gap
PANELS = (
    ("diva", [f"train/{t}" for t in TERMS], "DiVA loss terms", False),
    ("diva", [f"val/{h}/recall@1" for h in HEADS], "DiVA heads alone: validation R@1", False),
    ("baseline", ["train/discriminative", "beta_mean/discriminative"], "Baseline: loss, beta mean", False),
    ("diva", ["train/selfsimilarity"], "DiVA: DaNCE term (x alpha, log)", True),
    ("diva", ["train/dance_zero_loss_fraction"] + [f"train/{c}" for c in CORRELATIONS],
     "DiVA: DaNCE zero-loss fraction, decorrelation C", False),
    ("diva", [f"beta_mean/{t}" for t in ("discriminative", "shared", "intra")], "DiVA: beta means", False),
)


def plot(runs: dict, result: dict, path: str) -> None:
    """Validation R@1 bands (diva_tf 3-seed range and mean, original per seed), the DiVA-minus-
    baseline validation gap, and the seed means of the PANELS quantities (solid diva_tf, dashed
    original)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"diva_tf": "tab:blue", "original": "tab:red"}
    fig, axes = plt.subplots(3, 3, figsize=(18, 14))
    for ax, row, key, title in ((axes[0, 0], "baseline", "val/discriminative/recall@1",
                                 "Baseline 512-d: validation R@1"),
                                (axes[0, 1], "diva", "val/combined[1,1,1,1]/recall@1",
                                 "DiVA 4x128 (1,1,1,1): validation R@1")):
        for impl in IMPLEMENTATIONS:
            series = by_epoch(runs[impl][row], key)
            epochs = sorted(series)
            if epochs and impl == "diva_tf":
                ax.fill_between(epochs, [min(series[e]) for e in epochs],
                                [max(series[e]) for e in epochs], color=colors[impl], alpha=0.2)
                ax.plot(epochs, [sum(series[e]) / len(series[e]) for e in epochs], color=colors[impl],
                        label="diva_tf (seed mean and range)")
            elif epochs:
                for seed, records in runs[impl][row].items():
                    ax.plot(*zip(*[(r["epoch"], r[key]) for r in records if key in r]),
                            color=colors[impl], ls="--", marker=".", alpha=0.8,
                            label=f"original seed {seed}")
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax = axes[0, 2]
    for impl, gap in result["val_gap_by_epoch"].items():
        ax.plot(list(gap), list(gap.values()), color=colors[impl], marker=".",
                ls="-" if impl == "diva_tf" else "--", label=impl)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title("DiVA (1,1,1,1) minus baseline: validation R@1")
    ax.legend(fontsize=7)
    for ax, (row, keys, title, log) in zip(axes.flat[3:], PANELS):
        for i, key in enumerate(keys):
            label = key.split("/")[-2] if key.startswith("val/") else key.split("/")[-1]
            for impl in IMPLEMENTATIONS:
                series = by_epoch(runs[impl][row], key)
                epochs = [e for e in sorted(series) if e > 0]
                if epochs:
                    ax.plot(epochs, [sum(series[e]) / len(series[e]) for e in epochs], color=f"C{i}",
                            ls="-" if impl == "diva_tf" else "--",
                            label=f"{label} ({impl})" if impl == "diva_tf" or i == 0 else None)
        ax.set_title(title + " (solid diva_tf, dashed original)", fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=6)
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(a) -> None:
    result, runs = build(a.runs_dir, a.diva_tf_runs)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "curves.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    text = markdown(result)
    with open(os.path.join(a.out, "curves.md"), "w") as f:
        f.write(text)
    plot(runs, result, os.path.join(a.out, "curves.png"))
    print(text)
