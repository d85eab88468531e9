"""Throughput of the training and embedding paths; each row measured in its own process.

    python benchmarks/throughput.py                                   # small backbones, quick
    python benchmarks/throughput.py --backbones=resnet50:224 --replicas=1 --jit=0
    python benchmarks/throughput.py --baseline=b292b60                # before/after, same run
    python benchmarks/throughput.py --fused_bn --backbones=resnet50:224 --precision=fp32,bf16

Prints images/s for (a) the tf.data input pipeline alone (decode + two augmented views),
(b) the full DiVA train step (query net, key encoder, four losses, decorrelation, optimizers, EMA,
queue), (c) the train step of the discriminative head alone, (d) embedding inference, (e) DiVA
through `fit` with the real input pipeline and (f) through `fit` on one in-memory batch (so (e) vs
(f) is the input pipeline's cost and (f) vs (b) the per-step Python of the loop), and (g) the
seconds of one in-run evaluation after the first (what every later epoch pays); with and without
jit_compile, on 1 and 2 replicas (logical CPU devices), in float32 and mixed bfloat16.
Achieved FLOP/s is given as a share of the CPU's fp32 peak by the formula cores x clock x 32
FLOP/cycle (AVX2 + FMA), and of a large float32 matmul measured at the start of the run.

`--baseline=REF` runs every row a second time on the code of git revision REF (a temporary
`git worktree`), interleaved with the working tree, and prints the speed-up of each column
(baseline time / this time); `--pairs=N` repeats each pair N times in alternating order and prints
the median speed-up, since this shared machine's speed drifts by up to +-40 % between rows.
`--fused_bn` isolates one change in a single process: the DiVA step with Keras's BatchNormalization
and with the fused inference BN, timed in alternating blocks.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ("input", "diva", "disc", "infer", "fit", "fit_mem", "eval")


# ---- measurement helpers (run inside a row process) ------------------------------------
def _timeit(fn, warmup: int, min_iters: int, min_seconds: float, repeats: int) -> float:
    """Median over `repeats` blocks of seconds per call; a block has >= min_iters calls and lasts
    >= min_seconds."""
    for _ in range(warmup):
        fn()
    blocks = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while calls < min_iters or time.perf_counter() - t0 < min_seconds:
            fn()
            calls += 1
        blocks.append((time.perf_counter() - t0) / calls)
    return statistics.median(blocks)


def model_flops(model, size: int) -> float:
    """FLOPs of one forward pass for one image, from the TF profiler on the frozen graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    tf.get_logger().setLevel("ERROR")
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return float(tf.compat.v1.profiler.profile(graph=frozen.graph, options=opts).total_float_ops)


def _fake_folder(root: str, n_classes: int, per_class: int, size: int) -> str:
    from PIL import Image

    rng = np.random.RandomState(0)
    for c in range(n_classes):
        d = os.path.join(root, f"c{c:03d}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.randint(0, 255, (size, size, 3), np.uint8)).save(f"{d}/{i}.jpg")
    return root


def _config(name: str, size: int, bs: int, precision: str, **extra):
    """The benchmark's Config (random init, tiny queue); sets the global bf16 policy if asked."""
    import keras

    from diva_tf.config import Config

    if precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    return Config(backbone=name, backbone_weights="none", bs=bs, crop=size, resize=int(size * 1.15),
                  diva_moco_n_key_batches=4, mixed_precision=precision == "bf16", **extra)


def _synthetic_batch(bs: int, size: int) -> tuple:
    """(view1, view2, labels): random float images in 0..255 and two images per class."""
    rng = np.random.RandomState(0)
    return (rng.uniform(0, 255, (bs, size, size, 3)).astype("float32"),
            rng.uniform(0, 255, (bs, size, size, 3)).astype("float32"),
            np.repeat(np.arange(bs // 2), 2).astype("int32"))


def _trainer(cfg, num_classes: int, steps: int):
    """A compiled DiVATrainer of cfg (also on a --baseline revision from before the option
    groups, whose trainer took the whole Config)."""
    from diva_tf.training.trainer import DiVATrainer

    if hasattr(DiVATrainer, "compile_for_training"):
        trainer = DiVATrainer(cfg, num_classes, steps_per_epoch=steps)
        trainer.compile_for_training()
        return trainer
    if "steps_per_epoch" in inspect.signature(DiVATrainer).parameters:  # before issue 33
        trainer = DiVATrainer(cfg, num_classes, batch_size=cfg.bs, steps_per_epoch=steps,
                              epochs=cfg.n_epochs, objective=cfg, optimizer=cfg, seed=cfg.seed)
        trainer.compile(jit_compile=cfg.jit_compile)
        return trainer
    trainer = DiVATrainer(cfg, num_classes, batch_size=cfg.bs, objective=cfg, seed=cfg.seed)
    trainer.compile(optimizer=cfg, jit_compile=cfg.jit_compile)
    return trainer


def _evaluator(cfg, splits):
    """The in-run Evaluator of cfg (also on a --baseline revision from before the option groups)."""
    try:
        from diva_tf.evaluation.in_run import Evaluator
    except ImportError:  # a --baseline revision from before the move into diva_tf.evaluation
        from diva_tf.evaluator import Evaluator
    if "cfg" in inspect.signature(Evaluator).parameters:  # Evaluator(cfg, splits)
        return Evaluator(cfg, splits)
    return Evaluator(splits, cfg.diva_features, cfg, cfg, cfg.dataset)


def _fit_seconds(cfg, num_classes: int, steps: int, repeats: int, dataset) -> float:
    """Median seconds per step of `fit` epochs of `steps` steps, after one warm-up epoch."""
    import keras

    seconds = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.t0)

    keras.utils.set_random_seed(0)
    trainer = _trainer(cfg, num_classes, steps)
    trainer.fit(dataset, epochs=1 + repeats, steps_per_epoch=steps, verbose=0, callbacks=[EpochTimer()])
    return statistics.median(seconds[1:]) / steps


def bench_row(name, size, rep, jit, precision, opts) -> dict:
    """One table row (the driver runs each row in its own process: two MirroredStrategy instances
    in one process share collective keys)."""
    import keras
    import tensorflow as tf

    import diva_tf
    from diva_tf import data

    bs = opts.bs
    timing = dict(warmup=2, min_iters=opts.iters, min_seconds=opts.seconds, repeats=opts.repeats)
    cfg = _config(name, size, bs, precision, jit_compile=jit, dataset="folder", data_dir=opts.root)
    row = {"code": os.path.dirname(os.path.dirname(os.path.abspath(diva_tf.__file__)))}
    single = rep == 1 and not jit
    splits = data.load_splits(cfg)
    if single and precision == "fp32":
        it = iter(data.train_dataset(splits.train, cfg))
        row["input"] = _timeit(lambda: next(it), **timing) / bs
    batch = _synthetic_batch(bs, size)
    devices = [f"/cpu:{i}" for i in range(rep)]
    strategy = tf.distribute.MirroredStrategy(devices) if rep > 1 else tf.distribute.get_strategy()
    variants = {"diva": cfg, "disc": cfg.replace(diva_features=["discriminative"], diva_rho_decorrelation=[])}
    for key, c in variants.items():
        with strategy.scope():
            keras.utils.set_random_seed(0)
            t = _trainer(c, bs // 2, 10 ** 6)
        it = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
        t.make_train_function()
        train_fn = t.train_function
        row[key] = _timeit(lambda: train_fn(it)["loss"].numpy(), **timing) / bs
        if key == "diva":
            embed = tf.function(lambda x: t.embedder(x, training=False), jit_compile=jit)
            images = tf.constant(batch[0])
            row["infer"] = _timeit(lambda: embed(images)["discriminative"].numpy(), **timing) / bs
            row["flops"] = model_flops(t.embedder, size)
            embedder = t.embedder
    if single:
        steps = max(opts.iters, int(opts.seconds * 2 / (row["diva"] * bs)) + 1)
        num_classes = int(splits.train.labels.max()) + 1
        row["fit"] = _fit_seconds(cfg, num_classes, steps, opts.repeats,
                                  data.train_dataset(splits.train, cfg, steps_per_epoch=steps)) / bs
        row["fit_mem"] = _fit_seconds(cfg, bs // 2, steps, opts.repeats,
                                      tf.data.Dataset.from_tensors(batch).repeat()) / bs
        evaluator = _evaluator(cfg, splits)
        row["eval"] = _timeit(lambda: evaluator(embedder), warmup=1, min_iters=1, min_seconds=0.0,
                              repeats=opts.repeats)
    return row


def bench_fused_bn(name, size, precision, opts) -> dict:
    """Keras's BatchNormalization vs the fused inference BN on the same DiVA train step, in one
    process, in alternating blocks: the drift of a shared machine hits both sides alike."""
    import keras
    import tensorflow as tf

    from diva_tf.model.backbones.batchnorm import FusedInferenceBatchNormalization

    bs = opts.bs
    cfg = _config(name, size, bs, precision)
    batch = _synthetic_batch(bs, size)
    steps = {}
    for variant in ("keras", "fused"):
        keras.utils.set_random_seed(0)
        t = _trainer(cfg, bs // 2, 10 ** 6)
        if variant == "keras":
            for model in (t.embedder, t.key_encoder):
                for layer in model._flatten_layers(include_self=False, recursive=True):
                    if type(layer) is FusedInferenceBatchNormalization:
                        layer.__class__ = keras.layers.BatchNormalization
        t.make_train_function()
        it = iter(tf.data.Dataset.from_tensors(batch).repeat())
        steps[variant] = (lambda f=t.train_function, it=it: f(it)["loss"].numpy())
    for fn in steps.values():
        fn(), fn()
    times = {v: [] for v in steps}
    for k in range(2 * opts.repeats):
        for v in (("keras", "fused") if k % 2 == 0 else ("fused", "keras")):
            times[v].append(_timeit(steps[v], warmup=0, min_iters=opts.iters, min_seconds=opts.seconds,
                                    repeats=1) / bs)
    ratios = [a / b for a, b in zip(times["keras"], times["fused"])]
    return {"keras": statistics.median(times["keras"]), "fused": statistics.median(times["fused"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def _child(flag: str, args, tree: str | None = None) -> dict | str:
    """Run this script with `flag` in a new process (diva_tf imported from `tree` if given);
    its last stdout line as a dict, or "failed: <last stderr line>"."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, os.path.abspath(__file__), flag, f"--bs={args.bs}", f"--iters={args.iters}",
           f"--seconds={args.seconds}", f"--repeats={args.repeats}"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return f"failed: {(p.stderr.strip().splitlines() or ['(no output)'])[-1][:150]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def fused_bn_table(args) -> None:
    print(f"{'backbone':>18} {'px':>4} {'prec':>4} | {'Keras BN img/s':>14} {'fused img/s':>12} "
          f"{'speed-up':>8} {'(min-max over blocks)':>22}")
    for spec in args.backbones.split(","):
        for precision in args.precision.split(","):
            r = _child(f"--fused_bn_row={spec}:{precision}", args)
            name, size = spec.split(":")
            lead = f"{name:>18} {size:>4} {precision:>4} |"
            if isinstance(r, str):
                print(f"{lead} {r}", flush=True)
                continue
            print(f"{lead} {1 / r['keras']:14.1f} {1 / r['fused']:12.1f} {r['ratio']:7.2f}x "
                  f"{r['ratio_min']:10.2f}-{r['ratio_max']:.2f}x", flush=True)


# ---- driver ----------------------------------------------------------------------------
def cpu_peak_flops() -> tuple[float, str]:
    """cores x max clock x 32 fp32 FLOP/cycle (2 FMA units x 8 lanes x 2), the issue's formula."""
    cores = os.cpu_count() or 1
    mhz, model = 0.0, "unknown CPU"
    try:
        text = open("/proc/cpuinfo").read()
        mhz = max(float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text))
        model = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
        if re.search(r"\bavx512f\b", text):
            model += ", has AVX-512 (64 FLOP/cycle: twice this peak)"
    except (OSError, ValueError, AttributeError):
        pass
    mhz = mhz or 2500.0
    return cores * mhz * 1e6 * 32, f"{cores} cores x {mhz / 1000:.2f} GHz x 32; {model}"


def measured_matmul_flops(n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of a float32 [n, n] x [n, n] matmul on all cores: a practical ceiling."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    fn = tf.function(lambda x: tf.matmul(x, x))
    per_call = _timeit(lambda: fn(a).numpy(), warmup=2, min_iters=3, min_seconds=seconds, repeats=3)
    return 2 * n ** 3 / per_call


def checkout(ref: str, into: str) -> str:
    """A detached worktree of `ref` (removed again by `remove_checkout`)."""
    p = subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", into, ref],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"--baseline={ref}: cannot check it out ({p.stderr.strip()})")
    return into


def remove_checkout(path: str) -> None:
    subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", path], capture_output=True)


def run_row(tree: str, spec: str, args) -> dict | str:
    row = _child(f"--row={spec}:{args.root}", args, tree)
    if isinstance(row, str):
        return row
    if os.path.realpath(row["code"]) != os.path.realpath(tree):
        return f"failed: imported diva_tf from {row['code']}, not {tree}"
    return row


def _rate(r: dict, key: str) -> float:
    return 1.0 / r[key] if key in r else float("nan")


def format_row(lead: str, r: dict, peak: float, matmul: float) -> str:
    diva, disc = r["diva"], r.get("disc", float("nan"))
    # a train step costs ~3 forward passes of the query net (forward + backward) + 1 for the keys
    train_flops = 4 * r["flops"] / diva
    return (f"{lead} {_rate(r, 'input'):9.0f} {_rate(r, 'diva'):9.1f} {_rate(r, 'disc'):9.1f} "
            f"{diva / disc:9.2f} {_rate(r, 'infer'):9.1f} {_rate(r, 'fit'):9.1f} {_rate(r, 'fit_mem'):9.1f} "
            f"{r.get('eval', float('nan')):7.2f} "
            f"{100 * train_flops / peak:7.1f}% {100 * train_flops / matmul:7.1f}% "
            f"{100 * r['flops'] / r['infer'] / peak:7.1f}%")


def compare_row(trees, spec_row: str, lead: str, args, peak: float, matmul: float) -> None:
    """Run one row on each tree, --pairs times in alternating order; with two trees print the
    median over pairs of each column's speed-up (baseline seconds / this seconds)."""
    ratios = {}
    for k in range(args.pairs):
        results = {}
        for label, tree in (trees if k % 2 == 0 else trees[::-1]):
            r = run_row(tree, spec_row, args)
            print(f"{label:>8} {lead} {r}" if isinstance(r, str) else
                  format_row(f"{label:>8} {lead}", r, peak, matmul), flush=True)
            results[label] = r
        if len(trees) == 2 and all(isinstance(r, dict) for r in results.values()):
            old, new = (results[label] for label, _ in trees)
            for key in COLUMNS:
                if key in old and key in new:
                    ratios.setdefault(key, []).append(old[key] / new[key])
    if ratios:
        text = " ".join(f"{k}={statistics.median(v):.2f}x" for k, v in ratios.items())
        print(f"{'speed-up':>8} {'':>18} {'':>4} {'':>3} {'':>3} {'':>4} | {text}"
              f"{f' (median of {args.pairs} pairs)' if args.pairs > 1 else ''}", flush=True)


class _Tee:
    """stdout that also goes to a file (the committed raw output of a run)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
            s.flush()

    def flush(self):
        for s in self.streams:
            s.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", default="tiny:64,mobilenet_v3_small:112,efficientnet_lite0:64",
                    help="comma-separated name:size")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3, help="at least this many calls per timing block")
    ap.add_argument("--seconds", type=float, default=1.0, help="at least this long per timing block")
    ap.add_argument("--repeats", type=int, default=3, help="timing blocks per number (median)")
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--jit", default="0,1")
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    ap.add_argument("--baseline", default="", help="git revision to compare against, same run")
    ap.add_argument("--pairs", type=int, default=1,
                    help="with --baseline: run each row this many times per tree, alternating")
    ap.add_argument("--fused_bn", action="store_true",
                    help="instead: Keras BN vs fused BN, alternating in one process per backbone")
    ap.add_argument("--out", default="", help="also write everything printed to this file (commit "
                    "it next to the README table it backs, e.g. benchmarks/results/throughput/)")
    ap.add_argument("--row", default="", help=argparse.SUPPRESS)
    ap.add_argument("--fused_bn_row", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.row:
        import tensorflow as tf

        name, size, rep, jit, precision, args.root = args.row.split(":", 5)
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(int(rep))])
        row = bench_row(name, int(size), int(rep), bool(int(jit)), precision, args)
        print(json.dumps(row))
        return

    if args.fused_bn_row:
        name, size, precision = args.fused_bn_row.split(":")
        print(json.dumps(bench_fused_bn(name, int(size), precision, args)))
        return
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        sys.stdout = _Tee(sys.stdout, open(args.out, "w"))
        print(f"# {' '.join(sys.argv)}  ({time.strftime('%Y-%m-%d %H:%M')})")
    if args.fused_bn:
        fused_bn_table(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        trees = [("this", REPO)]
        if args.baseline:
            trees.insert(0, (args.baseline[:8], checkout(args.baseline, os.path.join(tmp, "baseline"))))
        try:
            peak, peak_text = cpu_peak_flops()
            matmul = measured_matmul_flops()
            print(f"fp32 peak by formula {peak / 1e9:.0f} GFLOP/s ({peak_text})")
            print(f"measured fp32 matmul 2048^2: {matmul / 1e9:.0f} GFLOP/s; batch {args.bs}; "
                  f"median of {args.repeats} blocks of >= {args.iters} calls and >= {args.seconds} s")
            header = (f"{'code':>8} {'backbone':>18} {'px':>4} {'rep':>3} {'jit':>3} {'prec':>4} | "
                      f"{'input':>9} {'DiVA':>9} {'disc':>9} {'DiVA/disc':>9} {'infer':>9} {'fit':>9} {'fit_mem':>9} "
                      f"{'eval s':>7} "
                      f"{'train%pk':>8} {'train%mm':>8} {'inf%pk':>8}")
            print(header + "\n" + " " * 48 + "(images/s; eval in s; %pk = of formula peak, %mm = of measured matmul)")
            print("-" * len(header))
            for spec in args.backbones.split(","):
                name, size = spec.split(":")
                args.root = _fake_folder(os.path.join(tmp, f"d{size}"), 40, 6, int(int(size) * 1.25))
                for precision in args.precision.split(","):
                    for jit in args.jit.split(","):
                        for rep in args.replicas.split(","):
                            spec_row = f"{name}:{size}:{rep}:{jit}:{precision}"
                            lead = f"{name:>18} {size:>4} {rep:>3} {jit:>3} {precision:>4} |"
                            compare_row(trees, spec_row, lead, args, peak, matmul)
        finally:
            if args.baseline:
                remove_checkout(os.path.join(tmp, "baseline"))


if __name__ == "__main__":
    main()
