"""Recall, latency and size of the retrieval index types at 100k and 1M items.

    flock /tmp/diva_bench.lock python benchmarks/index_scale.py                  # 100k and 1M
    flock /tmp/diva_bench.lock python benchmarks/index_scale.py --n 20000 --queries 200  # quick
    python benchmarks/index_scale.py --from_index INDEX_DIR --types "Flat;HNSW32;IVF64,Flat"

Gallery and queries are clustered unit vectors like trained embeddings: SOP-like classes (at
least 2 items, mean ~5.3, benchmarks/eval_scale.py's class sizes), item = class centre + Gaussian
noise of norm `--noise` x the centre's, renormalised. Unlike eval_scale's isotropic vectors, centres
and noise have a power-law spectrum (variance of axis i ~ i^-`--decay` in a random orthonormal
basis; decay 1 -> ~28 effective dimensions of 512), as trained embeddings concentrate their
variance in few directions; isotropic 512-d noise makes the exact top 10 near-ties no
approximate index finds. With noise 1.2 the exact class Recall@1 falls as the gallery grows and
classes crowd each other (measured: 0.77 at 5.8k items, 0.63 at 100k, 0.47 at 1M): near a trained
model's ~0.8 on Stanford Online Products only at a few thousand items. `--queries` items are drawn
out of the gallery (seeded), so every query has class-mates in it.

`--from_index DIR` measures real embeddings instead: the vectors of a `Flat` index that
`python -m diva_tf.index build --labels_from_folders` wrote (labels from items.json).

Each index type is built with the code `python -m diva_tf.index build` runs
(`diva_tf.serving.index`: new_index, train on `--train_size` seeded vectors, add, search knobs),
on all threads. Then, per search setting: recall@1 / @10 against the exact top-10 (IndexFlatIP),
and query latency p50 / p99 for single queries and for batches of 64, on 1 and on 2 threads
(faiss.omp_set_num_threads). Size on disk is the written index.faiss; memory is the RSS growth of
reading it back whole, and of reading it memory-mapped (what `RetrievalIndex.read` does) before any
query, and the 1-minute load average after timing. Per gallery, how hard the data is: exact class
Recall@1 and the gap between the 10th and 11th exact similarity (what an approximate top 10 must
resolve), absolute and in units of the spread of a query's similarities to random gallery items.
Results go to OUT/index_scale.json, OUT/data.json and OUT/index_scale.md after every index.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from diva_tf.serving import index as retrieval  # noqa: E402
from eval_scale import SOP_TEST, class_sizes  # noqa: E402

K = 10
BATCH = 64


def index_types(n: int) -> list[tuple[str, str, list[int]]]:
    """(factory string, knob, values searched) per index type; IVF lists and the HNSW candidate
    lists searched grow with n."""
    if n < 50_000:
        lists, probes = 64, [4, 16]
    else:
        lists, probes = (1024, [32, 128]) if n <= 300_000 else (4096, [32, 128, 256])
    return [("Flat", "", [0]),
            (f"IVF{lists},PQ64", "nprobe", [8, 32, 128]),
            (f"IVF{lists},Flat", "nprobe", probes),
            ("HNSW32", "efSearch", [64, 128, 256] + ([512, 1024] if n > 300_000 else []))]


def clustered(sizes: np.ndarray, dim: int, noise: float, decay: float, rng) -> np.ndarray:
    """Unit vectors [sum(sizes), dim]: class centre + noise, both with axis variances ~ i^-decay
    in a random orthonormal basis."""
    scale = np.arange(1, dim + 1, dtype=np.float32) ** np.float32(-decay / 2)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    centres = rng.standard_normal((len(sizes), dim), dtype=np.float32) * scale
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = np.repeat(centres, sizes, axis=0)
    emb += rng.standard_normal(emb.shape, dtype=np.float32) * (scale * np.float32(
        noise / np.linalg.norm(scale)))
    emb = emb @ basis
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb


def split(emb: np.ndarray, labels: np.ndarray, n_queries: int, rng):
    """(gallery, queries, gallery labels, query labels): `n_queries` rows drawn out."""
    query_rows = np.zeros(len(emb), bool)
    query_rows[rng.choice(len(emb), n_queries, replace=False)] = True
    return (np.ascontiguousarray(emb[~query_rows]), np.ascontiguousarray(emb[query_rows]),
            labels[~query_rows], labels[query_rows])


def synthetic(n: int, n_queries: int, args):
    rng = np.random.default_rng(args.seed)
    total = n + n_queries
    classes = max(1, round(total * SOP_TEST["classes"] / SOP_TEST["n"]))
    sizes = class_sizes(total, classes, rng)
    emb = clustered(sizes, args.dim, args.noise, args.decay, rng)
    return split(emb, np.repeat(np.arange(len(sizes)), sizes), n_queries, rng)


def from_index(index_dir: str, n_queries: int, seed: int):
    """The vectors of a Flat index and its items' labels, split like the synthetic data."""
    built = retrieval.RetrievalIndex.read(index_dir, mmap=False)
    if built.manifest.get("index_type", "Flat") != "Flat":
        raise SystemExit(f"--from_index {index_dir}: needs a Flat index, not "
                         f"{built.manifest['index_type']}")
    emb = built.index.reconstruct_n(0, built.index.ntotal)
    labels = np.unique([str(i["label"]) for i in built.items], return_inverse=True)[1]
    return split(emb, labels, n_queries, np.random.default_rng(seed))


def exact_neighbours(gallery: np.ndarray, queries: np.ndarray):
    """(scores, ids) of the exact top K + 1 (the K + 1st measures the margin)."""
    import faiss

    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    return flat.search(queries, K + 1)


def hardness(name: str, gallery, queries, labels, query_labels, scores, ids, seed: int) -> dict:
    """Exact class Recall@1 and the median gap between the 10th and 11th exact similarity, also
    in units of the standard deviation of each query's similarities to 2,000 random items."""
    rng = np.random.default_rng(seed)
    sample = gallery[rng.choice(len(gallery), min(2000, len(gallery)), replace=False)]
    spread = (queries @ sample.T).std(axis=1)
    gap = scores[:, K - 1] - scores[:, K]
    return {"data": name, "n": len(gallery), "queries": len(queries),
            "class_recall@1": float(np.mean(labels[ids[:, 0]] == query_labels)),
            "top10_gap": float(np.median(gap)), "top10_gap_sd": float(np.median(gap / spread))}


def recall(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """recall@1: exact nearest neighbour ranked first; recall@10: share of the exact top 10 in
    the returned top 10."""
    at1 = float(np.mean(found[:, 0] == exact[:, 0]))
    at10 = float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact)]))
    return at1, at10


def latency_ms(index, queries: np.ndarray, batch: int, budget_s: float, min_calls: int,
               max_calls: int):
    """p50, p99 (ms per call) and the number of calls timed: at least min_calls, more while
    within budget_s, at most max_calls."""
    times = []
    start = time.perf_counter()
    for call in range(max_calls):
        rows = np.arange(call * batch, (call + 1) * batch) % len(queries)
        t = time.perf_counter()
        index.search(queries[rows], K)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and call + 1 >= min_calls:
            break
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(times)


def build(index_type: str, gallery: np.ndarray, train_size: int, seed: int, params: dict):
    """(index, the `params` its type has, set before adding: efConstruction, k_factor_rf...)."""
    index = retrieval.new_index(index_type, gallery.shape[1])
    fixed = {k: v for k, v in params.items() if settable(index, k, v)}
    retrieval.train(index, gallery, index_type, train_size, seed)
    return retrieval.add_vectors(index, gallery, np.arange(len(gallery), dtype=np.int64)), fixed


LOAD = """
import sys, faiss
from diva_tf.serving.index import read_faiss
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
faiss.write_index(faiss.IndexFlatIP(4), sys.argv[1] + ".warm")  # page in faiss's reading code
read_faiss(sys.argv[1] + ".warm", sys.argv[2] == "mmap")
before = rss()
index = read_faiss(sys.argv[1], sys.argv[2] == "mmap")
print(rss() - before)
"""


def sizes_mb(index, folder: str) -> tuple[float, float, float]:
    """(disk, RSS growth of a fresh process reading it whole, and memory-mapped)."""
    import subprocess

    import faiss

    path = os.path.join(folder, "index.faiss")
    faiss.write_index(index, path)
    grown = [float(subprocess.run([sys.executable, "-c", LOAD, path, mode], check=True,
                                  capture_output=True, text=True, cwd=os.path.dirname(HERE)
                                  ).stdout.split()[-1])
             for mode in ("whole", "mmap")]
    disk = os.path.getsize(path) / 2**20
    os.remove(path)
    return disk, grown[0], grown[1]


def run_type(index_type: str, knob: str, values: list[int], data: dict, args,
             folder: str) -> list[dict]:
    import faiss

    gallery, queries, exact = data["gallery"], data["queries"], data["exact"]
    faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    index, fixed = build(index_type, gallery, args.train_size, args.seed, args.params)
    build_s = time.perf_counter() - start
    disk, ram, mapped = sizes_mb(index, folder)
    rows = []
    for value in values:
        if knob:
            retrieval.apply_search_params(index, {knob: value})
        faiss.omp_set_num_threads(args.threads)
        at1, at10 = recall(index.search(queries, K)[1], exact)
        row = {"data": data["name"], "n": len(gallery), "index": index_type, "knob": knob,
               "value": value if knob else None, "build_s": build_s,
               "build_threads": args.threads, "disk_mb": disk, "ram_mb": ram, "mmap_mb": mapped,
               "recall@1": at1, "recall@10": at10, "params": fixed}
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            for batch, name in ((1, "single"), (BATCH, "batch64")):
                p50, p99, calls = latency_ms(index, queries, batch, args.budget_s,
                                             args.min_calls, args.max_calls)
                row[f"{name}_t{threads}"] = {"p50_ms": p50, "p99_ms": p99, "calls": calls}
        row["load"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    del index
    gc.collect()
    return rows


def settable(index, name: str, value: int) -> bool:
    """Whether faiss's ParameterSpace knows `name` for `index` (e.g. k_factor_rf: RFlat only)."""
    import faiss

    try:
        faiss.ParameterSpace().set_index_parameter(index, name, value)
        return True
    except RuntimeError:
        return False


def chosen_types(n: int, dim: int, types: str, values: list[int], knob_name: str = ""):
    """index_types(n), or the ';'-separated `types` (any factory string: its knob, `knob_name`
    if it has that one, searched at
    the values of the preset with the same knob); `values` replace the knob values of every
    type that has one."""
    known = {t[0]: t for t in index_types(n)}
    by_knob = {knob: searched for _, knob, searched in known.values()}
    chosen = []
    for name in types.split(";") if types else known:
        if name in known:
            _, knob, searched = known[name]
        else:
            knobs = retrieval.search_params(retrieval.new_index(name, dim), name)
            knob = knob_name if knob_name in knobs else next(iter(knobs), "")
            searched = by_knob.get(knob, [0])
        chosen.append((name, knob, values if values and knob else searched))
    return chosen


def order(row: dict) -> tuple:
    names = [t[0] for t in index_types(row["n"])]
    return (row["data"] != "synthetic", row["data"], row["n"],
            names.index(row["index"]) if row["index"] in names else len(names), row["index"],
            sorted(row.get("params", {}).items()), row["value"] or 0)


def table(rows: list[dict]) -> str:
    head = ("| data | items | index | knob | build s | disk MB | RAM MB | mmap MB | R@1 | R@10 | "
            "1 query p50/p99 ms, 1 thr | 2 thr | batch 64 p50/p99 ms, 1 thr | 2 thr | "
            "speed-up vs Flat (1 query, 1 thr) | load |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    flat = {(r["data"], r["n"]): r["single_t1"]["p50_ms"] for r in rows if r["index"] == "Flat"}
    for r in rows:
        lat = [f"{r[k]['p50_ms']:.2f} / {r[k]['p99_ms']:.2f}"
               for k in ("single_t1", "single_t2", "batch64_t1", "batch64_t2")]
        speed = flat.get((r["data"], r["n"]), float("nan")) / r["single_t1"]["p50_ms"]
        shown = ({r["knob"]: r["value"]} if r["knob"] else {}) | r.get("params", {})
        knob = ", ".join(f"{k}={v}" for k, v in shown.items()) or "-"
        threads = r.get("build_threads", 1)
        build_s = f"{r['build_s']:.1f}" + (f" ({threads} thr)" if threads != 1 else "")
        load = f"{r['load']:.1f}" if "load" in r else "-"
        lines.append(f"| {r['data']} | {r['n']:,} | {r['index']} | {knob} | {build_s} | "
                     f"{r['disk_mb']:.0f} | {r['ram_mb']:.0f} | {r['mmap_mb']:.0f} | "
                     f"{r['recall@1']:.3f} | {r['recall@10']:.3f} | {' | '.join(lat)} | "
                     f"{speed:.1f}x | {load} |")
    return "\n".join(lines) + "\n"


def hardness_table(stats: list[dict]) -> str:
    lines = ["| data | items | queries | exact class R@1 | median gap 10th-11th | in SDs |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {s['data']} | {s['n']:,} | {s['queries']} | {s['class_recall@1']:.3f} | "
              f"{s['top10_gap']:.2g} | {s['top10_gap_sd']:.2g} |" for s in stats]
    return "\n".join(lines) + "\n"


def load_json(path: str) -> list[dict]:
    rows = json.load(open(path)) if os.path.exists(path) else []
    for row in rows:  # rows written before real embeddings were measured
        row.setdefault("data", "synthetic")
    return rows


def galleries(args):
    """(name, gallery, queries, labels, query labels) per gallery measured."""
    if args.from_index:
        name = args.name or os.path.basename(os.path.normpath(args.from_index))
        yield (name,) + from_index(args.from_index, args.queries, args.seed)
        return
    for n in args.n or [100_000, 1_000_000]:
        yield (args.name or "synthetic",) + synthetic(n, args.queries, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, action="append", help="gallery sizes (100k and 1M)")
    parser.add_argument("--from_index", default="", help="real embeddings: a Flat index folder")
    parser.add_argument("--name", default="", help="data name in the tables (default: "
                        "synthetic, or the --from_index folder name)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=1.2, help="noise norm relative to centre")
    parser.add_argument("--decay", type=float, default=1.0, help="power-law spectrum exponent")
    parser.add_argument("--train_size", type=int, default=retrieval.DEFAULT_TRAIN_SIZE)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="build threads")
    parser.add_argument("--budget_s", type=float, default=4.0, help="latency timing per cell")
    parser.add_argument("--min_calls", type=int, default=20)
    parser.add_argument("--max_calls", type=int, default=200)
    parser.add_argument("--types", default="", help="only these, ';'-separated: Flat;HNSW32")
    parser.add_argument("--values", default="", help="knob values instead of the defaults: 256,512")
    parser.add_argument("--knob", default="", help="the knob --values sweeps for types with "
                        "several: k_factor_rf")
    parser.add_argument("--params", default="", help="fixed faiss search parameters of the "
                        "types that have them: k_factor_rf=4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "index_scale"))
    args = parser.parse_args()
    values = [int(v) for v in args.values.split(",") if v]
    args.params = {k: int(v) for k, v in (p.split("=") for p in args.params.split(",") if p)}
    os.makedirs(args.out, exist_ok=True)
    json_path, data_path = (os.path.join(args.out, f) for f in ("index_scale.json", "data.json"))
    rows, stats = load_json(json_path), load_json(data_path)
    for name, gallery, queries, labels, query_labels in galleries(args):
        start = time.perf_counter()
        scores, ids = exact_neighbours(gallery, queries)
        hard = hardness(name, gallery, queries, labels, query_labels, scores, ids, args.seed)
        print(f"{name} n={len(gallery)}: exact top-{K + 1} in "
              f"{time.perf_counter() - start:.1f} s; {json.dumps(hard)}", flush=True)
        stats = [s for s in stats if (s["data"], s["n"]) != (name, len(gallery))] + [hard]
        stats.sort(key=lambda s: (s["data"] != "synthetic", s["data"], s["n"]))
        with open(data_path, "w") as f:
            json.dump(stats, f, indent=1)
        data = {"name": name, "gallery": gallery, "queries": queries, "exact": ids[:, :K]}
        with tempfile.TemporaryDirectory() as folder:
            for index_type, knob, searched in chosen_types(len(gallery), gallery.shape[1],
                                                           args.types, values, args.knob):
                new = run_type(index_type, knob, searched, data, args, folder)
                rows = [r for r in rows if (r["data"], r["n"], r["index"], r.get("params", {}))
                        != (name, len(gallery), index_type, new[0]["params"])] + new
                rows.sort(key=order)
                with open(json_path, "w") as f:
                    json.dump(rows, f, indent=1)
                with open(os.path.join(args.out, "index_scale.md"), "w") as f:
                    f.write(table(rows) + "\n" + hardness_table(stats))
        del gallery, queries, data
        gc.collect()


if __name__ == "__main__":
    main()
