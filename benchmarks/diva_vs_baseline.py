"""DiVA vs. its single-head baseline, its ablations and variants, on emoji or any class-folder
dataset (issues 7 and 12).

    python benchmarks/diva_vs_baseline.py --data_dir data/emoji --out benchmarks/results \
        [--dataset emoji|folder] [--seeds 0,1,2] [--epochs 40] [--lr 1e-4] [--rows ...] \
        [--chosen='<train flags>'] [--readme README.md]

Every row uses the same backbone (efficientnet_lite0, ImageNet weights), image size, batch size,
steps per epoch, epoch count, learning rate and seeds:

  gap                      ImageNet global-average-pooled features (1280-d, L2-normalised), no training
  random_heads             epoch 0 of the DiVA runs: ImageNet features through randomly initialised heads
  discriminative           one 512-d head, margin loss + distance-weighted sampling
  diva_published           four 128-d heads with the sample runs' loss settings (algorithm.md 6.2, CUB):
                           rho 1500 x 3, alphas 0.3, DaNCE temperature 0.01
  diva_aux                 four 128-d heads, DaNCE temperature 0.1, and a class margin loss on every
                           auxiliary head (--diva_aux_discriminative=1): chosen on seed-0
                           validation in an earlier round of issue 12
  diva_chosen              four 128-d heads with the flags of --chosen (default: the configuration
                           with the best validation R@1 over 3 seeds; see the README)
  diva                     four 128-d heads + decorrelation (aux -> discriminative, rho --rho each)
  diva_rho1500             the same with the original's rho 1500
  diva_no_selfsimilarity   DiVA without the DaNCE head   (shared, intra -> discriminative)
  diva_no_shared           DiVA without the shared head  (selfsimilarity, intra -> discriminative)
  diva_no_intra            DiVA without the intra head   (selfsimilarity, shared -> discriminative)

Each trained run carves --val_fraction of the training classes as a validation split. Multi-head
runs evaluate every head-weight combination of --combinations at every epoch; the (epoch,
combination) pair with the best VALIDATION R@1 is selected (a single-head run selects its epoch) and
the TEST metrics of that pair are reported. The test classes are never used for any choice. Every
row is reported over the same seeds: those that every trained row with a finished run has finished
(the footer names, loudly, the runs not finished and the finished runs left out), so any two numbers
of a table compare. Each run is a fresh `python -m diva_tf.train` subprocess with its own
workdir under --runs_dir (default runs/diva_vs_baseline); a run whose metrics.jsonl already holds
its last epoch is skipped, so an interrupted benchmark resumes (an unfinished run resumes from its
last checkpoint).

Writes <out>/<name>_diva_vs_baseline.md and .json (name = --name, default the dataset), prints the
table, and with --readme replaces the block between `<!-- BENCHMARK_TABLE:<name> -->` and
`<!-- /BENCHMARK_TABLE:<name> -->` in that file with it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILE = os.path.join(REPO, "configs", "emoji.flags")
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r")
HEADS = ("discriminative", "selfsimilarity", "shared", "intra")


def _ablation(drop: str) -> list[str]:
    heads = [h for h in HEADS if h != drop]
    aux = [h for h in heads if h != "discriminative"]
    return [f"--diva_features={','.join(heads)}",
            f"--diva_decorrelations={','.join(f'{h}-discriminative' for h in aux)}",
            f"--diva_rho_decorrelation={','.join(['{rho}'] * len(aux))}"]


PUBLISHED = ["--diva_features=" + ",".join(HEADS), "--diva_rho_decorrelation=1500,1500,1500",
             "--diva_alpha_ssl=0.3", "--diva_alpha_shared=0.3", "--diva_alpha_intra=0.3",
             "--diva_moco_temperature=0.01"]
# The DiVA configuration with the best emoji validation R@1 over seeds 0-2 (issue 12): a class
# margin loss on the concatenation of the heads (the evaluated embedding), and DaNCE at temperature
# 0.1 instead of the collapsing 0.01.
CHOSEN = "--diva_combined_loss=1.0 --diva_moco_temperature=0.1"
AUX = ["--diva_aux_discriminative=1.0", "--diva_moco_temperature=0.1"]
# Test-time head weights (HEADS order) tried on validation by every four-head row; equal first.
COMBINATIONS = "1,1,1,1;1,0.5,0.5,0.5;0.5,1,1,1;1,1,1,0;1,1,0,1"

# row name -> (description, extra train flags or None for the untrained rows)
ROWS = {
    "gap": ("ImageNet pooled features (1280-d), no training", None),
    "random_heads": ("ImageNet features + random heads (4x128, epoch 0 of DiVA runs)", None),
    "discriminative": ("Discriminative head only (512-d, margin + distance sampling)",
                       ["--diva_features=discriminative", "--embed_dim=512",
                        "--diva_rho_decorrelation="]),
    "diva_published": ("DiVA, published settings (4x128, rho 1500, alphas 0.3, temperature 0.01)",
                       PUBLISHED),
    "diva_aux": ("DiVA + class margin loss on each auxiliary head (4x128: " + " ".join(AUX) + ")",
                 ["--diva_features=" + ",".join(HEADS), *AUX]),
    "diva_chosen": ("DiVA, chosen on validation (--dims: --chosen)",
                    ["--diva_features=" + ",".join(HEADS), "{chosen}"]),
    "diva": ("DiVA (4x128 + decorrelation, rho --rho)",
             ["--diva_features=" + ",".join(HEADS),
              "--diva_rho_decorrelation={rho},{rho},{rho}"]),
    "diva_rho1500": ("DiVA, rho 1500 (original default)",
                     ["--diva_features=" + ",".join(HEADS),
                      "--diva_rho_decorrelation=1500,1500,1500"]),
    "diva_no_selfsimilarity": ("DiVA without selfsimilarity (3x128)", _ablation("selfsimilarity")),
    "diva_no_shared": ("DiVA without shared (3x128)", _ablation("shared")),
    "diva_no_intra": ("DiVA without intra (3x128)", _ablation("intra")),
}
TRAINED = [r for r, (_, flags) in ROWS.items() if flags is not None]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="data/emoji", help="prepared emoji folder, or a class-folder "
                   "dataset with --dataset=folder")
    p.add_argument("--dataset", default="emoji", choices=("emoji", "folder"))
    p.add_argument("--name", default="", help="stem of the result files and README block "
                   "(default: the dataset)")
    p.add_argument("--chosen", default=CHOSEN, help="train flags of the diva_chosen row, space-separated "
                   "(write it with '=': --chosen='--diva_moco_temperature=0.1 ...')")
    p.add_argument("--combinations", default=COMBINATIONS, help="';'-separated head weights "
                   "(discriminative, selfsimilarity, shared, intra) evaluated by four-head rows; the "
                   "one with the best validation R@1 is selected")
    p.add_argument("--readme", default="", help="also write the table into this file's "
                   "BENCHMARK_TABLE:<name> block")
    p.add_argument("--out", default="benchmarks/results/issue12", help="results folder (table + JSON)")
    p.add_argument("--runs_dir", default="", help="workdirs of the runs (default <out>/runs/<name>: "
                   "their metrics.jsonl, config.json and wall_time.json are committed so finished "
                   "runs are skipped on any machine; checkpoints, TensorBoard and logs are gitignored)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default="gap,random_heads,discriminative,diva_published,diva_aux,diva_chosen",
                   help="comma list out of " + ",".join(ROWS))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--tau", type=int, default=0, help="lr step-decay epoch (0 = the flagfile's)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--bs", type=int, default=112)
    p.add_argument("--steps_per_epoch", type=int, default=0, help="0 = full pass (N_train / bs)")
    p.add_argument("--image_size", type=int, default=64, help="resize = crop (64 = native)")
    p.add_argument("--val_fraction", type=float, default=0.15)
    p.add_argument("--rho", type=float, default=150.0, help="rho of every decorrelation direction of "
                   "the diva and diva_no_* rows (150: chosen on validation; the original's 1500 is the "
                   "diva_rho1500 row)")
    p.add_argument("--moco_n_key_batches", type=int, default=10)
    p.add_argument("--extra", default="", help="further train flags for every trained row, "
                   "space-separated; write it with '=' since the value starts with '--' "
                   "(e.g. --extra='--diva_alpha_ssl=0.1 --diva_fixed=true')")
    p.add_argument("--tag", default="", help="suffix of the run folders (for variants)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--report_only", action="store_true", help="only collect finished runs")
    p.add_argument("--gap_eval", default="", help=argparse.SUPPRESS)  # internal: JSON output path
    return p.parse_args(argv)


def common_flags(a) -> list[str]:
    tau = [f"--tau={a.tau}"] if a.tau else []
    return [f"--flagfile={FLAGFILE}", f"--dataset={a.dataset}", f"--data_dir={a.data_dir}", *tau,
            "--backbone=efficientnet_lite0",
            "--backbone_weights=imagenet", f"--resize={a.image_size}", f"--crop={a.image_size}",
            f"--bs={a.bs}", f"--steps_per_epoch={a.steps_per_epoch}", f"--n_epochs={a.epochs}",
            f"--lr={a.lr}", f"--val_classes_fraction={a.val_fraction}", "--eval_every=1",
            "--eval_test=val_improved",
            f"--diva_moco_n_key_batches={a.moco_n_key_batches}", "--keep_checkpoints=1"]


def run_name(a, row: str) -> str:
    """Folder stem: rows with decorrelation carry their rho, so --rho variants never collide."""
    if row in ("diva_rho1500", "diva_published", "diva_aux", "diva_chosen"):
        return row
    if row.startswith("diva"):
        return f"{row}_rho{a.rho:g}"
    return row


def describe(a, row: str) -> str:
    dims = next((f.split("=", 1)[1].replace(",", "+") for f in a.chosen.split()
                 if f.startswith("--head_dims=")), "4x128")
    text = (ROWS[row][0].replace("--rho", f"{a.rho:g}").replace("--chosen", a.chosen or "-")
            .replace("--dims", dims))
    if row.startswith("diva_no_"):
        text = text.replace(")", f", rho {a.rho:g})")
    if a.extra and row in TRAINED:
        text += f" [{a.extra}]"
    return text


def run_dir(a, row: str, seed: int) -> str:
    return os.path.join(a.runs_dir, f"{run_name(a, row)}{a.tag}_seed{seed}")


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def is_complete(records: list[dict], epochs: int) -> bool:
    """The run's metrics reach its last epoch with test metrics."""
    return any(r.get("epoch") == epochs and any(k.startswith("test/") for k in r) for r in records)


def finished(workdir: str, epochs: int) -> bool:
    return is_complete(read_metrics(workdir), epochs)


def row_flags(a, row: str) -> list[str]:
    """The row's train flags with --rho and --chosen filled in; four-head rows also evaluate
    every head-weight combination of --combinations."""
    flags = []
    for f in ROWS[row][1]:
        flags += a.chosen.split() if f == "{chosen}" else [f.replace("{rho}", f"{a.rho:g}")]
    if f"--diva_features={','.join(HEADS)}" in flags and a.combinations:
        flags.append(f"--eval_combinations={a.combinations}")
    return flags


def train_flags(a, row: str, seed: int) -> list[str]:
    return [*common_flags(a), *row_flags(a, row), *a.extra.split(), f"--seed={seed}",
            f"--workdir={run_dir(a, row, seed)}"]


def check_same_settings(a, row: str, seed: int) -> None:
    """A finished run folder is reused only if it was trained with this row's flags (e.g. not with
    another --chosen): the same rule as `diva_tf.train` applies when it resumes a run."""
    from diva_tf.config import Config, ConfigError
    from diva_tf.config.flags import FLAGS, config_from_flags, define_flags
    from diva_tf.runs.run_folder import check_resume_compatible

    define_flags()
    FLAGS.unparse_flags()
    FLAGS(["diva_vs_baseline", *train_flags(a, row, seed)])
    workdir = run_dir(a, row, seed)
    try:
        check_resume_compatible(Config.load(os.path.join(workdir, "config.json")), config_from_flags())
    except ConfigError as e:
        raise SystemExit(f"{row} seed {seed}: {e}. Pass --tag (or --runs_dir) to train these "
                         "settings in another folder.") from None


def train(a, row: str, seed: int) -> float:
    """Runs (or resumes) one training run; returns its wall time in seconds."""
    workdir = run_dir(a, row, seed)
    timing = os.path.join(workdir, "wall_time.json")
    if finished(workdir, a.epochs):
        check_same_settings(a, row, seed)
        if os.path.exists(timing):
            return json.load(open(timing))["seconds"]
        return float("nan")
    cmd = [a.python, "-m", "diva_tf.train", *train_flags(a, row, seed)]
    os.makedirs(workdir, exist_ok=True)
    previous = json.load(open(timing))["seconds"] if os.path.exists(timing) else 0.0
    print(f"[{time.strftime('%H:%M:%S')}] {row} seed {seed}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    with open(os.path.join(workdir, "train.log"), "a") as log:
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = previous + time.time() - t0
    with open(timing, "w") as f:
        json.dump({"seconds": seconds}, f)
    if rc != 0:
        raise SystemExit(f"{row} seed {seed} failed (exit {rc}); see {workdir}/train.log")
    print(f"[{time.strftime('%H:%M:%S')}]   done in {seconds:.0f}s", flush=True)
    return seconds


def embedding_names(metrics: list[dict]) -> list[str]:
    """The combined[...] embeddings when the run has several heads, else its single head."""
    names = sorted({k.split("/")[1] for k in metrics[0] if k.startswith("test/")})
    combined = [n for n in names if n.startswith("combined[")]
    return combined or names


def primary_name(metrics: list[dict]) -> str:
    """Equal head weights when evaluated, else the run's first embedding."""
    names = embedding_names(metrics)
    equal = [n for n in names if set(n[len("combined["):-1].split(",")) == {"1"}]
    return (equal or names)[0]


def select(metrics: list[dict]) -> dict:
    """Test metrics of the (trained epoch, embedding) with the best validation R@1 (earliest epoch,
    then first name, on ties)."""
    candidates = [(r, emb) for r in metrics if r["epoch"] > 0 for emb in embedding_names(metrics)
                  if f"val/{emb}/recall@1" in r]
    best, emb = max(candidates, key=lambda c: (c[0][f"val/{c[1]}/recall@1"], -c[0]["epoch"]))
    return {"epoch": best["epoch"], "embedding": emb, "val_recall@1": best[f"val/{emb}/recall@1"],
            **{m: best[f"test/{emb}/{m}"] for m in METRICS}}


def untrained(metrics: list[dict]) -> dict:
    emb = primary_name(metrics)
    r0 = next(r for r in metrics if r["epoch"] == 0)
    return {"epoch": 0, "embedding": emb, "val_recall@1": r0.get(f"val/{emb}/recall@1"),
            **{m: r0[f"test/{emb}/{m}"] for m in METRICS}}


def paired_difference(per_seed: list[dict], baseline: list[dict], metric="recall@1") -> dict:
    """Row minus baseline on the same seeds: mean and sample std of the per-seed differences."""
    base = {r["seed"]: r[metric] for r in baseline}
    diffs = [r[metric] - base[r["seed"]] for r in per_seed if r["seed"] in base]
    mean, std = mean_std(diffs)
    return {"n_seeds": len(diffs), "mean": mean, "std": std, "per_seed": diffs}


def collect(a, row: str, seeds: list[int]) -> tuple[list[dict], list]:
    """(selected metrics of each finished run of the row, its wall time in seconds or None for
    random_heads, whose runs are timed as diva_published); the gap row has one seedless entry."""
    if row == "gap":
        g = run_gap(a)
        return ([{**g, "seed": None}], [g["seconds"]]) if g else ([], [])
    src = "diva_published" if row == "random_heads" else row
    per_seed, walls = [], []
    for seed in seeds:
        workdir = run_dir(a, src, seed)
        metrics = read_metrics(workdir)
        if not is_complete(metrics, a.epochs):
            continue
        check_same_settings(a, src, seed)
        per_seed.append({**(untrained(metrics) if row == "random_heads" else select(metrics)), "seed": seed})
        t = os.path.join(workdir, "wall_time.json")
        if row == "random_heads":
            walls.append(None)
        else:
            walls.append(json.load(open(t))["seconds"] if os.path.exists(t) else float("nan"))
    return per_seed, walls


def common_seeds(finished_seeds: dict, seeds: list[int]) -> list[int]:
    """The seeds every trained row with a finished run has finished (a row without any is left
    out): every row of the table is reported over these, so any two of its numbers compare."""
    have = [set(s) for s in finished_seeds.values() if s]
    return [s for s in seeds if all(s in h for h in have)]


def left_out_note(finished_seeds: dict, common: list[int], seeds: list[int]) -> str:
    """A loud footer line naming the runs not finished and the finished runs not in the table
    ('' when every row finished every seed)."""
    def listing(pairs):
        return "; ".join(f"{row} seed {','.join(map(str, lost))}" if kept else f"{row} (none: row left out)"
                         for row, lost, kept in pairs if lost) or "nothing"

    unfinished = [(row, [s for s in seeds if s not in have], have) for row, have in finished_seeds.items()]
    dropped = [(row, [s for s in have if s not in common], have) for row, have in finished_seeds.items()]
    if not any(lost for _, lost, _ in unfinished):
        return ""
    return (f"**Incomplete seed set: every row is reported over seed(s) "
            f"{','.join(map(str, common)) or 'none'}, the seeds every row in the table finished. Not "
            f"finished: {listing(unfinished)}. Left out of the table: {listing(dropped)}.**\n\n")


def write_block(path: str, name: str, text: str) -> None:
    """Replace the text between this benchmark's markers in `path` (appended when absent)."""
    start, end = f"<!-- BENCHMARK_TABLE:{name} -->", f"<!-- /BENCHMARK_TABLE:{name} -->"
    with open(path) as f:
        content = f.read()
    block = f"{start}\n{text.strip()}\n{end}"
    if start in content and end in content:
        head, rest = content.split(start, 1)
        content = head + block + rest.split(end, 1)[1]
    else:
        content = content.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(content)


def gap_eval(a, out_json: str) -> None:
    """ImageNet GAP features of the test split, L2-normalised, scored like the trained runs."""
    import keras
    import numpy as np

    from diva_tf import data
    from diva_tf.config import Config
    from diva_tf.evaluation import FAISS_DEFAULT_SEED, embed_dataset, evaluate_embedding
    from diva_tf.model.network import build_embedding_model

    t0 = time.time()
    cfg = Config(dataset=a.dataset, data_dir=a.data_dir, backbone="efficientnet_lite0",
                 backbone_weights="imagenet", resize=a.image_size, crop=a.image_size,
                 diva_features=["discriminative"], diva_rho_decorrelation=[],
                 val_classes_fraction=a.val_fraction, seed=0).validate()
    splits = data.load_splits(cfg)
    model = build_embedding_model(cfg, cfg.seed)
    pooled = keras.Model(model.input, model.get_layer("avgpool").output)
    embs, labels = embed_dataset(lambda x: {"gap": pooled(x, training=False)},
                                 data.eval_dataset(splits.test, cfg), verbose=False)
    feats = embs["gap"] / np.linalg.norm(embs["gap"], axis=1, keepdims=True).clip(1e-12)
    # k-means with the number of training classes (incl. validation), as the in-run evaluator does.
    n_clusters = splits.train.num_classes + (splits.val.num_classes if splits.val else 0)
    scores = evaluate_embedding(feats, labels, n_clusters=n_clusters, dataset=a.dataset,
                                seed=FAISS_DEFAULT_SEED)
    result = {"epoch": 0, "embedding": f"gap[{feats.shape[1]}]", "val_recall@1": None,
              **{m: float(scores[m]) for m in METRICS}, "seconds": time.time() - t0}
    with open(out_json, "w") as f:
        json.dump(result, f)


def run_gap(a) -> dict:
    path = os.path.join(a.runs_dir, f"gap_{a.image_size}px.json")
    if not os.path.exists(path) and not a.report_only:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] gap: ImageNet pooled features", flush=True)
        argv = [a.python, os.path.abspath(__file__), f"--data_dir={a.data_dir}", f"--dataset={a.dataset}",
                f"--image_size={a.image_size}", f"--val_fraction={a.val_fraction}",
                f"--gap_eval={path}"]
        subprocess.check_call(argv, cwd=REPO)
    return json.load(open(path)) if os.path.exists(path) else {}


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def summarise(per_seed: list[dict], wall: list[float]) -> dict:
    out = {"n_seeds": len(per_seed), "seeds": [r["seed"] for r in per_seed]}
    for m in METRICS + ("val_recall@1", "epoch"):
        out[m] = dict(zip(("mean", "std"), mean_std([r.get(m) for r in per_seed])))
    done = [w for w in wall if not math.isnan(w)]
    out["wall_seconds"] = {"per_run_mean": mean_std(wall)[0],
                           "per_run_median": statistics.median(done) if done else float("nan"),
                           "total": sum(done)}
    return out


def table(results: dict, a) -> str:
    head = ("| row | seeds | R@1 | R@1 - baseline | R@2 | R@4 | R@8 | NMI | MAP@R | val R@1 | "
            "sel. epoch | sel. head weights | wall/run |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for row, res in results.items():
        s = res["summary"]
        if not s.get("n_seeds"):
            continue
        cells = [describe(a, row), str(s["n_seeds"])]
        for m in METRICS:
            mu, sd = s[m]["mean"], s[m]["std"]
            cells.append(f"{100 * mu:.2f} ± {100 * sd:.2f}")
            if m == "recall@1":
                d = res.get("minus_baseline")
                cells.append(f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f}"
                             if d and d["n_seeds"] and row in TRAINED and row != "discriminative" else "–")
        mu, sd = s["val_recall@1"]["mean"], s["val_recall@1"]["std"]
        cells.append("–" if math.isnan(mu) else f"{100 * mu:.2f} ± {100 * sd:.2f}")
        cells.append("–" if row in ("gap", "random_heads") else f"{s['epoch']['mean']:.1f}")
        picked = sorted({r["embedding"] for r in res["per_seed"]})
        cells.append(" / ".join(p[len("combined["):-1] if p.startswith("combined[") else "–"
                                for p in picked))
        w = s["wall_seconds"]["per_run_median"]
        cells.append("–" if math.isnan(w) else f"{w:.0f} s")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def repo_path(path: str) -> str:
    """path relative to the repository when inside it (what the results record, so that they name
    no folder of this machine), else absolute."""
    full = os.path.abspath(path)
    rel = os.path.relpath(full, REPO)
    return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.gap_eval:
        gap_eval(a, a.gap_eval)
        return 0
    a.runs_dir = a.runs_dir or os.path.join(a.out, "runs", a.name or a.dataset)
    a.data_dir, a.out, a.runs_dir = (repo_path(a.data_dir), repo_path(a.out),
                                   repo_path(a.runs_dir))
    a.readme = a.readme and os.path.abspath(a.readme)
    os.chdir(REPO)  # where the training runs are started, so repository paths stay relative
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    rows = [r for r in a.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(ROWS)}")
    t_start = time.time()
    results = {}
    wall = {}
    # Training order: the baseline and DiVA rows for every seed first, then the ablations, each
    # phase seed-major (an interrupted benchmark still has the main comparison, on equal seeds).
    to_train = [r for r in rows if r in TRAINED]
    if "random_heads" in rows and "diva_published" not in to_train:
        to_train.insert(0, "diva_published")  # random_heads = epoch 0 of the DiVA runs
    core = [r for r in to_train if r in ("discriminative", "diva_published", "diva_aux", "diva_chosen",
                                         "diva")]
    ablations = [r for r in to_train if r.startswith("diva_no_")]
    rest = [r for r in to_train if r not in core + ablations]
    if not a.report_only:
        if "gap" in rows:
            run_gap(a)
        for phase in (core, ablations, rest):
            for seed in seeds:
                for row in phase:
                    wall[(row, seed)] = train(a, row, seed)
    collected = {row: collect(a, row, seeds) for row in rows}
    finished_seeds = {row: [r["seed"] for r in per_seed] for row, (per_seed, _) in collected.items()
                      if row != "gap"}
    common = common_seeds(finished_seeds, seeds)
    for row, (per_seed, walls) in collected.items():
        kept = [(r, w) for r, w in zip(per_seed, walls) if row == "gap" or r["seed"] in common]
        per_seed, walls = [r for r, _ in kept], [w for _, w in kept]
        results[row] = {"description": describe(a, row), "workdirs": run_name(a, row), "per_seed": per_seed,
                        "summary": summarise(per_seed, [w for w in walls if w is not None])}
        if row in finished_seeds:
            results[row]["left_out_seeds"] = sorted(set(finished_seeds[row]) - set(common))
    baseline = results.get("discriminative", {}).get("per_seed", [])
    for res in results.values():
        res["minus_baseline"] = paired_difference(res["per_seed"], baseline) if baseline else None
    settings = {k: v for k, v in vars(a).items() if k not in ("gap_eval", "python", "report_only")}
    settings.update(backbone="efficientnet_lite0", backbone_weights="imagenet",
                    flagfile="configs/emoji.flags", seeds=seeds, seeds_reported=common,
                    selection="(epoch, head-weight combination) with the best val R@1; test "
                              "metrics reported")
    name = a.name or a.dataset
    md = table(results, a)
    what = ("emoji test split (792 classes x 4 vendors)" if a.dataset == "emoji"
            else f"{name} test split ({os.path.basename(a.data_dir)}, class-disjoint)")
    missing = left_out_note(finished_seeds, common, seeds)
    note = (f"\n{missing}{what}, efficientnet_lite0 ImageNet, {a.image_size}px, bs {a.bs}, {a.epochs} "
            f"epochs, lr {a.lr:g}, seeds {','.join(map(str, common)) if missing else a.seeds}; "
            f"mean ± sample std over seeds, in %. "
            f"R@1 - baseline: per-seed difference to the discriminative row, mean ± std. Epoch and "
            f"(four-head rows) test-time head weights (discriminative, selfsimilarity, shared, "
            f"intra) selected on validation R@1 ({a.val_fraction:g} of the training classes); "
            f"test metrics at that choice. The pooled-features row is deterministic (one "
            f"evaluation). wall/run = median over seeds of the wall time of one training run (incl. "
            f"start-up and per-epoch evaluation; a run that shared the CPU with others takes "
            f"several times longer, hence the median). Command: `python benchmarks/diva_vs_baseline.py "
            f"{shlex.join(sys.argv[1:] if argv is None else argv)}`\n")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"{name}_diva_vs_baseline.md"), "w") as f:
        f.write(md + "\n" + note)
    if a.readme:
        write_block(a.readme, name, md + "\n" + note)
    with open(os.path.join(a.out, f"{name}_diva_vs_baseline.json"), "w") as f:
        json.dump({"settings": settings, "rows": results,
                   "sum_of_run_wall_seconds": sum(r["summary"]["wall_seconds"]["total"]
                                                  for r in results.values() if r["per_seed"]),
                   "benchmark_wall_seconds_this_invocation": time.time() - t_start}, f, indent=2)
    print(md)
    print(note)
    print(f"this invocation: {time.time() - t_start:.0f}s; results in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
