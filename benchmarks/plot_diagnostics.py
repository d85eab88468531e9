"""Training curves of runs side by side, for diagnosing DiVA against its baseline (issue 12).

    python benchmarks/plot_diagnostics.py --runs runs/dvb/discriminative_seed0,runs/dvb/diva_published_seed0 \
        --out benchmarks/results/diagnosis.png [--summary benchmarks/results/diagnosis.json]

Reads each workdir's metrics.jsonl (one record per epoch, written by `diva_tf.train`; the same
scalars are in its tensorboard/ folder) and draws one panel per quantity: validation and test R@1 of
every head and head combination, the loss terms, the mean per-class margin beta of each margin task,
the decorrelation C of each direction (before rho), the DaNCE positive and weighted-negative logits,
and the fraction of DaNCE rows whose loss is ~0. `--summary` also writes, per run, the best
validation R@1 of each embedding with its epoch and the test R@1 there, plus the last epoch's
diagnostics, as JSON; `--table` writes, per run, the (epoch, embedding) the benchmark's
validation rule selects, with its test R@1, that embedding's mean validation R@1 after epoch 10 and
its test R@1 at the last epoch, as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PANELS = (
    ("val R@1", lambda k: k.startswith("val/") and k.endswith("/recall@1")),
    ("test R@1", lambda k: k.startswith("test/") and k.endswith("/recall@1")),
    ("loss terms (weighted)", lambda k: k.startswith("train/") and not k.startswith(
        ("train/dance_", "train/correlation_"))),
    ("mean beta", lambda k: k.startswith("beta_mean/")),
    ("decorrelation C (before rho)", lambda k: k.startswith("train/correlation_")),
    ("DaNCE logits / temperature", lambda k: k.startswith("train/dance_") and k.endswith("_logit")),
    ("DaNCE rows with loss < 1e-3", lambda k: k == "train/dance_zero_loss_fraction"),
)


def read_records(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no metrics.jsonl (is {workdir} a diva_tf workdir?)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(records: list[dict], key: str) -> tuple[list, list]:
    points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [e for e, _ in points], [v for _, v in points]


def summarise(records: list[dict]) -> dict:
    """Best validation R@1 per embedding (epoch, test R@1 there) and the last epoch's diagnostics."""
    out = {"epochs": max(r["epoch"] for r in records), "best_val": {}}
    names = sorted({k.split("/")[1] for r in records for k in r
                    if k.startswith("val/") and k.endswith("/recall@1")})
    for name in names:
        rows = [r for r in records if r["epoch"] > 0 and f"val/{name}/recall@1" in r]
        if not rows:
            continue
        best = max(rows, key=lambda r: (r[f"val/{name}/recall@1"], -r["epoch"]))
        out["best_val"][name] = {"epoch": best["epoch"], "val_recall@1": best[f"val/{name}/recall@1"],
                                 "test_recall@1": best.get(f"test/{name}/recall@1")}
    # The benchmark's rule: the (epoch, embedding) with the best validation R@1, earliest epoch and
    # then the equal-weight or first name on ties (embeddings are sorted, so "combined[..." first).
    if out["best_val"]:
        combined = {n: b for n, b in out["best_val"].items() if n.startswith("combined[")}
        pool = combined or out["best_val"]
        name = max(pool, key=lambda n: (pool[n]["val_recall@1"], -pool[n]["epoch"]))
        # Less selection noise than one epoch's reading: the embedding's mean validation R@1 after
        # epoch 10, and its test R@1 at the last epoch (a fixed schedule, no selection at all).
        late = [r[f"val/{name}/recall@1"] for r in records
                if r["epoch"] > 10 and f"val/{name}/recall@1" in r]
        out["selected"] = {"embedding": name, **pool[name],
                           "val_mean_after_epoch10": sum(late) / len(late) if late else None,
                           "last_test_recall@1": records[-1].get(f"test/{name}/recall@1")}
    last = records[-1]
    out["last"] = {k: v for k, v in last.items()
                   if k.startswith(("train/", "beta_mean/")) and isinstance(v, (int, float))}
    return out


def table(summaries: dict) -> str:
    """Markdown: per run, the selected (epoch, embedding) and its validation and test R@1."""
    def pct(x):
        return "–" if x is None else f"{100 * x:.2f}"

    lines = ["| run | epochs | selected embedding | epoch | val R@1 | test R@1 | "
             "mean val R@1, epochs > 10 | test R@1, last epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for label, s in summaries.items():
        sel = s.get("selected")
        if sel:
            lines.append(f"| {label} | {s['epochs']} | {sel['embedding']} | {sel['epoch']} | "
                         f"{pct(sel['val_recall@1'])} | {pct(sel['test_recall@1'])} | "
                         f"{pct(sel.get('val_mean_after_epoch10'))} | "
                         f"{pct(sel.get('last_test_recall@1'))} |")
    return "\n".join(lines)


def plot(runs: dict, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS), len(runs), figsize=(6.5 * len(runs), 3.2 * len(PANELS)),
                             squeeze=False, sharex="col")
    for col, (label, records) in enumerate(runs.items()):
        keys = sorted({k for r in records for k in r})
        for row, (title, wanted) in enumerate(PANELS):
            ax = axes[row][col]
            for key in (k for k in keys if wanted(k)):
                xs, ys = series(records, key)
                if xs:
                    name = key.split("/", 1)[1].replace("/recall@1", "")
                    ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=name)
            ax.set_title(f"{label}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7, loc="best")
        axes[-1][col].set_xlabel("epoch")
    # One y-range per R@1 row so baseline and DiVA read against each other.
    for row in (0, 1):
        ys = [y for ax in axes[row] for line in ax.lines for y in line.get_ydata()]
        if ys:
            for ax in axes[row]:
                ax.set_ylim(min(ys) - 0.01, max(ys) + 0.01)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=80)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="comma-separated workdirs")
    p.add_argument("--labels", default="", help="comma-separated panel labels (default: folder names)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--summary", default="", help="JSON summary to write")
    p.add_argument("--table", default="", help="markdown table of the selected epochs to write")
    a = p.parse_args(argv)
    dirs = [d for d in a.runs.split(",") if d]
    labels = [s for s in a.labels.split(",") if s] or [os.path.basename(d.rstrip("/")) for d in dirs]
    if len(labels) != len(dirs):
        raise SystemExit(f"{len(labels)} labels for {len(dirs)} runs")
    runs = {label: read_records(d) for label, d in zip(labels, dirs)}
    plot(runs, a.out)
    summaries = {label: summarise(r) for label, r in runs.items()}
    if a.summary:
        with open(a.summary, "w") as f:
            json.dump(summaries, f, indent=2)
    if a.table:
        with open(a.table, "w") as f:
            f.write(table(summaries) + "\n")
    print(table(summaries))
    print(f"wrote {a.out}" + (f" and {a.summary}" if a.summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
