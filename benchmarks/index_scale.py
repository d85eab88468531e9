"""Recall, latency and size of the retrieval index types at 100k and 1M items.

    flock /tmp/diva_bench.lock python benchmarks/index_scale.py                  # 100k and 1M
    flock /tmp/diva_bench.lock python benchmarks/index_scale.py --n 20000 --queries 200  # quick

Gallery and queries are clustered unit vectors like trained embeddings: SOP-like classes (at
least 2 items, mean ~5.3, benchmarks/eval_scale.py's class sizes), item = class centre + Gaussian
noise of norm `--noise` x the centre's, renormalised. Unlike eval_scale's isotropic vectors, centres
and noise have a power-law spectrum (variance of axis i ~ i^-`--decay` in a random orthonormal
basis; decay 1 -> ~28 effective dimensions of 512), as trained embeddings concentrate their
variance in few directions; isotropic 512-d noise makes the exact top 10 near-ties no
approximate index finds. Noise 1.2 gives an exact class Recall@1 of ~0.8, like a trained model on
Stanford Online Products. `--queries` items are drawn out of the gallery (seeded), so every query
has class-mates in it.

Each index type is built with the code `python -m diva_tf.index build` runs
(`diva_tf.serving.index`: new_index, train on `--train_size` seeded vectors, add, search knobs),
on all threads. Then, per search setting: recall@1 / @10 against the exact top-10 (IndexFlatIP),
and query latency p50 / p99 for single queries and for batches of 64, on 1 and on 2 threads
(faiss.omp_set_num_threads). Size on disk is the written index.faiss; memory is the RSS growth of
reading it back whole, and of reading it memory-mapped (what `RetrievalIndex.read` does) before any
query. Results go to OUT/index_scale.json and OUT/index_scale.md after every index.
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
    """(factory string, knob, values searched) per index type; IVF lists scale with n."""
    lists = 1024 if n <= 300_000 else 4096
    return [("Flat", "", [0]),
            (f"IVF{lists},PQ64", "nprobe", [8, 32, 128]),
            (f"IVF{lists},Flat", "nprobe", [32, 128]),
            ("HNSW32", "efSearch", [64, 128, 256])]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


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


def make_data(n: int, n_queries: int, args):
    rng = np.random.default_rng(args.seed)
    total = n + n_queries
    classes = max(1, round(total * SOP_TEST["classes"] / SOP_TEST["n"]))
    sizes = class_sizes(total, classes, rng)
    emb = clustered(sizes, args.dim, args.noise, args.decay, rng)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    query_rows = np.zeros(total, bool)
    query_rows[rng.choice(total, n_queries, replace=False)] = True
    return (np.ascontiguousarray(emb[~query_rows]), np.ascontiguousarray(emb[query_rows]),
            labels[~query_rows], labels[query_rows])


def exact_neighbours(gallery: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    return flat.search(queries, K)[1]


def recall(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """recall@1: exact nearest neighbour ranked first; recall@10: share of the exact top 10 in
    the returned top 10."""
    at1 = float(np.mean(found[:, 0] == exact[:, 0]))
    at10 = float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact)]))
    return at1, at10


def latency_ms(index, queries: np.ndarray, batch: int, budget_s: float, max_calls: int):
    """p50, p99 (ms per call) and the number of calls timed."""
    times = []
    start = time.perf_counter()
    for call in range(max_calls):
        rows = np.arange(call * batch, (call + 1) * batch) % len(queries)
        t = time.perf_counter()
        index.search(queries[rows], K)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and call >= 19:
            break
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(times)


def build(index_type: str, gallery: np.ndarray, train_size: int, seed: int):
    index = retrieval.new_index(index_type, gallery.shape[1])
    retrieval.train(index, gallery, index_type, train_size, seed)
    return retrieval.add_vectors(index, gallery, np.arange(len(gallery), dtype=np.int64))


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


def run_type(index_type: str, knob: str, values: list[int], gallery, queries, exact, args,
             folder: str) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    index = build(index_type, gallery, args.train_size, args.seed)
    build_s = time.perf_counter() - start
    disk, ram, mapped = sizes_mb(index, folder)
    rows = []
    for value in values:
        if knob:
            retrieval.apply_search_params(index, {knob: value})
        faiss.omp_set_num_threads(args.threads)
        at1, at10 = recall(index.search(queries, K)[1], exact)
        row = {"n": len(gallery), "index": index_type, "knob": knob, "value": value if knob else None,
               "build_s": build_s, "disk_mb": disk, "ram_mb": ram, "mmap_mb": mapped,
               "recall@1": at1, "recall@10": at10}
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            for batch, name in ((1, "single"), (BATCH, "batch64")):
                p50, p99, calls = latency_ms(index, queries, batch, args.budget_s, args.max_calls)
                row[f"{name}_t{threads}"] = {"p50_ms": p50, "p99_ms": p99, "calls": calls}
        rows.append(row)
        print(json.dumps(row), flush=True)
    del index
    gc.collect()
    return rows


def order(row: dict) -> tuple:
    names = [t[0] for t in index_types(row["n"])]
    return (row["n"], names.index(row["index"]) if row["index"] in names else len(names),
            row["value"] or 0)


def table(rows: list[dict]) -> str:
    head = ("| items | index | knob | build s | disk MB | RAM MB | mmap MB | R@1 | R@10 | "
            "1 query p50/p99 ms, 1 thr | 2 thr | batch 64 p50/p99 ms, 1 thr | 2 thr | "
            "speed-up vs Flat (1 query, 1 thr) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    flat = {r["n"]: r["single_t1"]["p50_ms"] for r in rows if r["index"] == "Flat"}
    for r in rows:
        lat = [f"{r[k]['p50_ms']:.2f} / {r[k]['p99_ms']:.2f}"
               for k in ("single_t1", "single_t2", "batch64_t1", "batch64_t2")]
        speed = flat.get(r["n"], float("nan")) / r["single_t1"]["p50_ms"]
        knob = f"{r['knob']}={r['value']}" if r["knob"] else "-"
        lines.append(f"| {r['n']:,} | {r['index']} | {knob} | {r['build_s']:.1f} | "
                     f"{r['disk_mb']:.0f} | {r['ram_mb']:.0f} | {r['mmap_mb']:.0f} | "
                     f"{r['recall@1']:.3f} | {r['recall@10']:.3f} | {' | '.join(lat)} | "
                     f"{speed:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, action="append", help="gallery sizes (100k and 1M)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=1.2, help="noise norm relative to centre")
    parser.add_argument("--decay", type=float, default=1.0, help="power-law spectrum exponent")
    parser.add_argument("--train_size", type=int, default=retrieval.DEFAULT_TRAIN_SIZE)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="build threads")
    parser.add_argument("--budget_s", type=float, default=4.0, help="latency timing per cell")
    parser.add_argument("--max_calls", type=int, default=200)
    parser.add_argument("--types", default="", help="only these, ';'-separated: Flat;HNSW32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "index_scale"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "index_scale.json")
    rows = json.load(open(json_path)) if os.path.exists(json_path) else []
    for n in args.n or [100_000, 1_000_000]:
        start = time.perf_counter()
        gallery, queries, labels, query_labels = make_data(n, args.queries, args)
        exact = exact_neighbours(gallery, queries)
        print(f"n={n}: data + exact top-{K} in {time.perf_counter() - start:.1f} s; exact class "
              f"Recall@1 {np.mean(labels[exact[:, 0]] == query_labels):.3f}", flush=True)
        chosen = [t for t in index_types(n) if not args.types or t[0] in args.types.split(";")]
        with tempfile.TemporaryDirectory() as folder:
            for index_type, knob, values in chosen:
                new = run_type(index_type, knob, values, gallery, queries, exact, args, folder)
                rows = [r for r in rows if (r["n"], r["index"]) != (n, index_type)] + new
                rows.sort(key=order)
                with open(json_path, "w") as f:
                    json.dump(rows, f, indent=1)
                with open(os.path.join(args.out, "index_scale.md"), "w") as f:
                    f.write(table(rows))
        del gallery, queries
        gc.collect()


if __name__ == "__main__":
    main()
