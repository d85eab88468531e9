"""Throughput of the training and embedding paths, measured side by side in one process.

    python benchmarks/throughput.py                       # small backbones, quick
    python benchmarks/throughput.py --backbones=resnet50:224,mobilenet_v3_small:112,tiny:64

Prints images/s for (a) the tf.data input pipeline alone (decode + two augmented views),
(b) the full DiVA train step (query net, key encoder, four losses, decorrelation, optimizers, EMA,
queue), (c) the train step of the discriminative head alone, (d) embedding inference; with and
without jit_compile and on 1 and 2 replicas (two logical CPU devices), plus achieved FLOP/s as a
fraction of the CPU's fp32 peak (cores x clock x 32 FLOP/cycle for AVX2+FMA).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def _setup_devices(replicas: int) -> None:
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(max(replicas, 1))])


def cpu_peak_flops() -> tuple[float, str]:
    """cores x max clock x 32 fp32 FLOP/cycle (2 FMA units x 8 lanes x 2)."""
    cores = os.cpu_count() or 1
    mhz = 0.0
    try:
        text = open("/proc/cpuinfo").read()
        mhz = max(float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text))
    except (OSError, ValueError):
        pass
    mhz = mhz or 2500.0
    return cores * mhz * 1e6 * 32, f"{cores} cores x {mhz / 1000:.2f} GHz x 32"


def model_flops(model, size: int) -> float:
    """FLOPs of one forward pass for one image, from the TF profiler on the traced graph."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    tf.get_logger().setLevel("ERROR")

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, options=opts)
    return float(info.total_float_ops)


def _timeit(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def _fake_folder(root: str, n_classes: int, per_class: int, size: int) -> str:
    from PIL import Image

    rng = np.random.RandomState(0)
    for c in range(n_classes):
        d = os.path.join(root, f"c{c:03d}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.randint(0, 255, (size, size, 3), np.uint8)).save(f"{d}/{i}.jpg")
    return root


def bench_input(cfg, root: str, iters: int) -> float:
    from diva_tf import data

    splits = data.load_splits(cfg.replace(data_dir=root, dataset="folder"))
    it = iter(data.train_dataset(splits.train, cfg.replace(data_dir=root, dataset="folder")))
    sec = _timeit(lambda: next(it), warmup=3, iters=iters)
    return cfg.bs / sec


def bench_row(name: str, size: int, rep: int, jit: bool, bs: int, iters: int, root: str) -> dict:
    """One table row, measured in this process (the driver runs each row in its own process:
    two MirroredStrategy instances in one process share collective keys)."""
    import keras

    from diva_tf.config import Config
    from diva_tf.trainer import DiVATrainer

    cfg = Config(backbone=name, backbone_weights="none", bs=bs, crop=size, resize=int(size * 1.15),
                 diva_moco_n_key_batches=4, jit_compile=jit, dataset="folder", data_dir=root)
    row = {"input": bench_input(cfg, root, iters * 4) if rep == 1 and not jit else float("nan")}
    rng = np.random.RandomState(0)
    batch = (rng.uniform(0, 255, (bs, size, size, 3)).astype("float32"),
             rng.uniform(0, 255, (bs, size, size, 3)).astype("float32"),
             np.repeat(np.arange(bs // 2), 2).astype("int32"))
    devices = [f"/cpu:{i}" for i in range(rep)]
    strategy = tf.distribute.MirroredStrategy(devices) if rep > 1 else tf.distribute.get_strategy()
    variants = {"diva": cfg, "disc": cfg.replace(diva_features=["discriminative"], diva_rho_decorrelation=[])}
    for key, c in variants.items():
        with strategy.scope():
            keras.utils.set_random_seed(0)
            t = DiVATrainer(c, bs // 2, steps_per_epoch=10 ** 6)
            t.compile_for_training()
        it = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
        t.make_train_function()
        train_fn = t.train_function
        row[key] = _timeit(lambda: train_fn(it)["loss"].numpy(), warmup=2, iters=iters)
        if key == "diva":
            embed = tf.function(lambda x: t.embedder(x, training=False), jit_compile=jit)
            images = tf.constant(batch[0])
            row["infer"] = _timeit(lambda: embed(images)["discriminative"].numpy(), warmup=2, iters=iters)
            row["flops"] = model_flops(t.embedder, size)
    return row


def main():
    import json
    import subprocess
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", default="tiny:64,mobilenet_v3_small:64,mobilenet_v3_small:112",
                    help="name:size list")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--jit", default="0,1")
    ap.add_argument("--row", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.row:
        name, size, rep, jit, root = args.row.split(":", 4)
        _setup_devices(int(rep))
        print(json.dumps(bench_row(name, int(size), int(rep), bool(int(jit)), args.bs, args.iters, root)))
        return

    peak, peak_text = cpu_peak_flops()
    print(f"CPU fp32 peak {peak / 1e9:.0f} GFLOP/s ({peak_text}); batch {args.bs}; "
          f"each row in its own process")
    header = (f"{'backbone':>20} {'px':>4} {'rep':>3} {'jit':>3} | {'input img/s':>11} "
              f"{'DiVA img/s':>10} {'disc img/s':>10} {'DiVA/disc':>9} {'infer img/s':>11} "
              f"{'train %peak':>11} {'infer %peak':>11}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.backbones.split(","):
            name, size = spec.split(":")
            root = _fake_folder(os.path.join(tmp, f"d{size}"), 40, 6, int(int(size) * 1.25))
            for jit in args.jit.split(","):
                for rep in args.replicas.split(","):
                    cmd = [sys.executable, __file__, f"--row={name}:{size}:{rep}:{jit}:{root}",
                           f"--bs={args.bs}", f"--iters={args.iters}"]
                    p = subprocess.run(cmd, capture_output=True, text=True)
                    lead = f"{name:>20} {size:>4} {rep:>3} {jit:>3} |"
                    if p.returncode != 0:
                        print(f"{lead} failed: {p.stderr.strip().splitlines()[-1][:150]}", flush=True)
                        continue
                    r = json.loads(p.stdout.strip().splitlines()[-1])
                    disc = r.get("disc", float("nan"))
                    # a train step costs ~3 forward passes of the query net (fwd + bwd) + 1 for keys
                    train_pct = 100 * 4 * r["flops"] * args.bs / r["diva"] / peak
                    infer_pct = 100 * r["flops"] * args.bs / r["infer"] / peak
                    print(f"{lead} {r['input']:11.1f} {args.bs / r['diva']:10.1f} {args.bs / disc:10.1f} "
                          f"{r['diva'] / disc:9.2f} {args.bs / r['infer']:11.1f} {train_pct:10.1f}% "
                          f"{infer_pct:10.1f}%", flush=True)


if __name__ == "__main__":
    main()
