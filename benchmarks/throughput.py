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


def bench_steps(cfg, make_strategy, iters: int):
    """(step seconds DiVA, step seconds discriminative-only, inference seconds per batch, FLOPs).

    Steps run through Keras's own train function (what `fit` calls), one fresh strategy per model.
    """
    import keras

    from diva_tf.trainer import DiVATrainer

    rng = np.random.RandomState(0)
    size = cfg.crop
    batch = (rng.uniform(0, 255, (cfg.bs, size, size, 3)).astype("float32"),
             rng.uniform(0, 255, (cfg.bs, size, size, 3)).astype("float32"),
             np.repeat(np.arange(cfg.bs // 2), 2).astype("int32"))
    out = []
    for c in (cfg, cfg.replace(diva_features=["discriminative"], diva_rho_decorrelation=[])):
        strategy = make_strategy()
        with strategy.scope():
            keras.utils.set_random_seed(0)
            t = DiVATrainer(c, cfg.bs // 2, steps_per_epoch=10 ** 6)
            t.compile_for_training()
            t.init_trackers()
        it = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
        t.make_train_function()
        train_fn = t.train_function
        out.append(_timeit(lambda: train_fn(it)["loss"].numpy(), warmup=2, iters=iters))
        if len(out) == 1:
            embed = tf.function(lambda x: t.embedder(x, training=False), jit_compile=c.jit_compile)
            images = tf.constant(batch[0])
            infer = _timeit(lambda: embed(images)["discriminative"].numpy(), warmup=2, iters=iters)
            flops = model_flops(t.embedder, size)
    return out[0], out[1], infer, flops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", default="tiny:64,mobilenet_v3_small:64,mobilenet_v3_small:112",
                    help="name:size list")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--jit", default="0,1")
    args = ap.parse_args()
    replica_counts = [int(r) for r in args.replicas.split(",")]
    _setup_devices(max(replica_counts))

    from diva_tf.config import Config

    peak, peak_text = cpu_peak_flops()
    print(f"CPU fp32 peak {peak / 1e9:.0f} GFLOP/s ({peak_text}); batch {args.bs}")
    header = (f"{'backbone':>20} {'px':>4} {'rep':>3} {'jit':>3} | {'input img/s':>11} "
              f"{'DiVA img/s':>10} {'disc img/s':>10} {'DiVA/disc':>9} {'infer img/s':>11} "
              f"{'train %peak':>11} {'infer %peak':>11}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.backbones.split(","):
            name, size = spec.split(":")
            size = int(size)
            root = _fake_folder(os.path.join(tmp, f"d{size}"), 40, 6, int(size * 1.25))
            for jit in [bool(int(j)) for j in args.jit.split(",")]:
                for rep in replica_counts:
                    cfg = Config(backbone=name, backbone_weights="none", bs=args.bs, crop=size,
                                 resize=int(size * 1.15), diva_moco_n_key_batches=4, jit_compile=jit,
                                 dataset="folder", data_dir=root)
                    devices = [f"/cpu:{i}" for i in range(rep)]

                    def make_strategy(devices=devices):
                        return (tf.distribute.MirroredStrategy(devices) if len(devices) > 1
                                else tf.distribute.get_strategy())
                    inp = bench_input(cfg, root, args.iters * 4) if rep == 1 and not jit else float("nan")
                    try:
                        diva, disc, infer, flops = bench_steps(cfg, make_strategy, args.iters)
                    except Exception as e:  # noqa: BLE001 - a row fails, the table goes on
                        print(f"{name:>20} {size:>4} {rep:>3} {int(jit):>3} | failed: {type(e).__name__}: {e}"[:200])
                        continue
                    # a train step is ~3 forward passes for the query net (fwd + bwd) + 1 for keys
                    train_pct = 100 * 4 * flops * args.bs / diva / peak
                    infer_pct = 100 * flops * args.bs / infer / peak
                    print(f"{name:>20} {size:>4} {rep:>3} {int(jit):>3} | {inp:11.1f} "
                          f"{args.bs / diva:10.1f} {args.bs / disc:10.1f} {diva / disc:9.2f} "
                          f"{args.bs / infer:11.1f} {train_pct:10.1f}% {infer_pct:10.1f}%", flush=True)


if __name__ == "__main__":
    main()
