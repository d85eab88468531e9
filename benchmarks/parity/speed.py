"""Train-step speed, the original vs diva_tf (`run.py speed`), on one fixed in-memory batch.

One worker process per intra-op thread count (TensorFlow fixes its thread pools when it starts;
torch follows torch.set_num_threads). Inside a worker the original diva_main.py trains on the same
batch over and over (its loop body unchanged: forward, key encoder, losses, backward, its gradient
logging, Adam, EMA, enqueue); its training iterator interleaves the blocks: `warmup` untimed
steps of each side, then `blocks` x (`iters` timed original steps, `iters` timed diva_tf steps
with its compiled train_step (`tf.function`, as `fit` runs it), `iters` timed diva_tf steps run
eagerly (`run_eagerly=True`), so that compiled-vs-eager is visible next to torch's eager loop). An original step is timed from handing out its batch to the request
for the next one. Cases: EfficientNet-Lite0 (ImageNet weights) at 64 px and ResNet-50 (random
weights; torchvision's v1.5 layout in torch, keras.applications' in diva_tf) at 224 px, DiVA
published settings (4 x 128 heads, queue, decorrelation).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.parity import official, tf_side

# Seconds between blocks, so that the other side's spinning worker threads go to sleep first.
PAUSE = 0.5
MODELS = {"lite0_64": ("lite0", "efficientnet_lite0", 64), "resnet50_224": ("resnet50", "resnet50", 224)}


class Interleaved:
    """The original's training iterator: yields its batches and times them, running each of
    diva_tf's blocks (name -> function running n steps) in between."""

    def __init__(self, loader, tf_blocks: dict, warmup: int, blocks: int, iters: int):
        self.loader, self.tf_blocks = loader, tf_blocks
        self.warmup, self.blocks, self.iters = warmup, blocks, iters
        self.times = {"original": [], **{name: [] for name in tf_blocks}}

    def __iter__(self):
        batches = iter(self.loader)
        for _ in range(self.warmup):
            yield next(batches)
        for block in self.tf_blocks.values():
            block(self.warmup)
        for _ in range(self.blocks):
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            for _ in range(self.iters):
                yield next(batches)
            self.times["original"].append((time.perf_counter() - t0) / self.iters)
            for name, block in self.tf_blocks.items():
                time.sleep(PAUSE)
                t0 = time.perf_counter()
                block(self.iters)
                self.times[name].append((time.perf_counter() - t0) / self.iters)


def worker(a, threads: int, config_path: str) -> list[dict]:
    torch = official.require_torch()
    torch.set_num_threads(threads)
    tf_side.configure_threads(threads)
    out = []
    for model in a.models.split(","):
        torch_backbone, tf_backbone, size = MODELS[model]
        bs = a.bs if model == "lite0_64" else a.resnet_bs
        trainer, step, batch = tf_side.speed_trainer(tf_backbone, size, bs, config_path)

        def tf_block(n, step, batch=batch):
            for _ in range(n):
                logs = step(batch)
            float(logs["loss"])

        tf_blocks = {"diva_tf": lambda n, step=step: tf_block(n, step),
                     "diva_tf_eager": lambda n, step=trainer.train_step: tf_block(n, step)}

        cfg = tf_side.load_config(config_path, bs=bs, crop=size, resize=size, data_dir="").to_dict()
        rng = np.random.RandomState(0)
        images = rng.uniform(0, 255, (bs, size, size, 3)).astype("float32")
        labels = np.repeat(np.arange(bs // 2), 2)
        n_batches = max(a.warmup + a.blocks * a.iters, cfg["diva_moco_n_key_batches"])
        timer = {}

        def datasets_select(base_cls, opt, images=images, labels=labels):
            base = base_cls(official.image_dict([f"img{i}" for i in range(bs)], labels), opt)
            ds = official.FixedViews(images, images[:, :, ::-1], labels, base)
            return {"training": ds, "validation": None, "testing": ds, "evaluation": ds,
                    "evaluation_train": ds}

        def on_epoch(g, epoch, loader):
            timer["it"] = Interleaved(loader, tf_blocks, a.warmup, a.blocks, a.iters)
            return timer["it"]

        with tempfile.TemporaryDirectory() as tmp:
            official.run_main(
                a.official_dir, official.original_argv(cfg, tmp, n_epochs=1), backbone=torch_backbone,
                datasets_select=datasets_select, on_training_epoch=on_epoch,
                evaluate=lambda g: {"speed/done": 1.0},
                sampler_select=lambda *args, **kw: official.FixedSampler([range(bs)] * n_batches))
        it = timer["it"]
        result = {"model": model, "image_size": size, "bs": bs, "threads": threads,
                  "blocks": a.blocks, "iters": a.iters,
                  **{f"{side}_s_per_step": times for side, times in it.times.items()}}
        for side in it.times:
            result[f"{side}_images_per_s"] = bs / statistics.median(result[f"{side}_s_per_step"])
        for side in tf_blocks:
            result[f"ratio_{side}_over_original"] = (result[f"{side}_images_per_s"]
                                                     / result["original_images_per_s"])
        out.append(result)
    return out


def main(a) -> None:
    from benchmarks.parity.run import committed_config
    config_path = committed_config("diva", 0)
    if a.worker:
        print("SPEED_RESULT " + json.dumps(worker(a, int(a.worker), config_path)), flush=True)
        return
    results = []
    for threads in a.threads.split(","):
        cmd = [sys.executable, "-m", "benchmarks.parity.run", "speed", "--official_dir",
               a.official_dir, "--worker", threads, "--models", a.models, "--bs", str(a.bs),
               "--resnet_bs", str(a.resnet_bs), "--blocks", str(a.blocks), "--iters", str(a.iters),
               "--warmup", str(a.warmup)]
        env = {**os.environ, "OMP_NUM_THREADS": threads, "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        lines = [l for l in proc.stdout.splitlines() if l.startswith("SPEED_RESULT ")]
        if proc.returncode != 0 or not lines:
            raise official.ParityError(f"speed worker ({threads} threads) failed: "
                                       f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
        results += json.loads(lines[-1][len("SPEED_RESULT "):])
    print("| model | threads | batch | original img/s (eager torch) | diva_tf img/s (compiled) "
          "| compiled / original | diva_tf img/s (eager) | eager / original |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['threads']} | {r['bs']} | {r['original_images_per_s']:.1f} | "
              f"{r['diva_tf_images_per_s']:.1f} | {r['ratio_diva_tf_over_original']:.2f} | "
              f"{r['diva_tf_eager_images_per_s']:.1f} | {r['ratio_diva_tf_eager_over_original']:.2f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"results": results, "load_average_at_end": os.getloadavg()}, f, indent=1)
