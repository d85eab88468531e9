"""Shared pieces of the export / serve / index tests: a tiny trained-run workdir, encoded test
images, and running the CLIs in a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
PROBE = os.path.join(REPO, "tests", "saved_model_probe.py")
CLIENT = os.path.join(REPO, "export", "client.py")

METRICS = [  # metrics.jsonl as a run writes it; the exported weights' embedding is not listed first
    {"epoch": 1, "test/discriminative/recall@1": 0.40, "test/combined[0.5,1,1,1]/recall@1": 0.31,
     "test/combined[0.5,1,1,1]/nmi": 0.5},
    {"epoch": 2, "test/discriminative/recall@1": 0.30, "test/combined[0.5,1,1,1]/recall@1": 0.42,
     "test/combined[0.5,1,1,1]/nmi": 0.6},
    {"epoch": 3, "train/loss": 1.0},
]


def tiny_config(**kw):
    from diva_tf.config import Config

    return Config(backbone="tiny", backbone_weights="none", crop=32, resize=36, dataset="folder",
                  **kw)


def make_workdir(path: str, seed: int = 1, metrics: list | None = None):
    """A run folder as training leaves it: config.json + best.weights.h5 (+ metrics.jsonl).
    The same seed gives the same weights (the backbone included, as a training run seeds it)."""
    import keras

    from diva_tf.model.network import build_embedding_model

    os.makedirs(path, exist_ok=True)
    cfg = tiny_config(seed=seed)
    keras.utils.set_random_seed(seed)
    model = build_embedding_model(cfg, cfg.seed)
    cfg.save(os.path.join(path, "config.json"))
    model.save_weights(os.path.join(path, "best.weights.h5"))
    if metrics:
        with open(os.path.join(path, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in metrics)
    return path, model, cfg


def eval_pipeline_images(encoded: list[bytes], cfg) -> np.ndarray:
    """What the evaluation pipeline (`data.eval_dataset`) feeds the model for these files."""
    from diva_tf import data
    from diva_tf.data.splits import Split

    split = Split(images=list(encoded), labels=np.zeros(len(encoded)), class_names=["all"])
    return np.concatenate([x for x, _ in data.eval_dataset(split, cfg).as_numpy_iterator()])


def reference(model, cfg, encoded: list[bytes], weights) -> dict:
    """Evaluation's embeddings: pipeline images, the model, the weighted head combination."""
    from diva_tf.evaluation.combine import combine_heads

    images = eval_pipeline_images(encoded, cfg)
    out = {k: np.asarray(v) for k, v in model(images, training=False).items()}
    return {"images": images, "embedding": combine_heads(out, cfg.diva_features, weights), **out}


def encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def sample_images(seed: int = 0) -> dict[str, bytes]:
    """Encoded images of several formats, sizes and channel counts (all must embed alike)."""
    rng = np.random.RandomState(seed)
    pix = lambda *shape: rng.randint(0, 256, shape).astype(np.uint8)  # noqa: E731
    return {"rgb.jpg": encode(pix(50, 40, 3), "JPEG"), "wide.png": encode(pix(30, 70, 3), "PNG"),
            "grey.png": encode(pix(48, 48), "PNG"), "rgba.png": encode(pix(36, 44, 4), "PNG"),
            "grey.jpg": encode(pix(40, 41), "JPEG")}


def write_files(folder: str, images: dict[str, bytes]) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, data in images.items():
        paths.append(os.path.join(folder, name))
        with open(paths[-1], "wb") as f:
            f.write(data)
    return paths


def subprocess_env() -> dict:
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run(args: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run a command from the repo root with diva_tf importable (`check` asserts success)."""
    return subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout, **kw)


def load_client():
    """export/client.py as a module (it lives outside the package, as users get it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("diva_client", CLIENT)
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    return client


def free_port() -> int:
    """A loopback port free right now (the server binds it a moment later)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base_path: str, name: str = "diva", *flags: str,
                 timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """`python -m diva_tf.serve` on a free port in a subprocess, once all its models are ready
    (`GET /v2/health/ready`); returns it and its base URL."""
    import time
    import urllib.request

    port = free_port()
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([PYTHON, "-m", "diva_tf.serve", "--export_dir", base_path,
                             "--model_name", name, "--port", str(port), *flags], cwd=REPO,
                            env=subprocess_env(), stdout=log, stderr=log, text=True)
    proc.log = log
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as reply:
                if reply.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    log.seek(0)
    raise AssertionError(f"server did not start (exit {proc.poll()}): {log.read()[-3000:]}")


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc
