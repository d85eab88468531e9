"""Bounded load test of the REST stand-in (`python -m diva_tf.serve`), loopback only.

    python benchmarks/serve_load.py                               # 32 clients, 20 s, own server
    python benchmarks/serve_load.py --clients 64 --seconds 10 --out results.txt
    python benchmarks/serve_load.py --url http://127.0.0.1:8501/v1/models/diva   # a running one

Without --url it exports a tiny untrained model (backbone `tiny`, 32 px) to a temporary folder and
starts the stand-in on it in a subprocess on an ephemeral port (stopped at the end). N client
threads then each hold one keep-alive `http.client` connection and POST `:predict` with one
64x64 JPEG as {"b64": ...}, back to back, for T seconds, and stop by themselves. A connection
error is counted and the client reconnects. Prints requests/s, p50/p99 latency of the completed
requests and the error count (non-2xx replies + connection errors); exits 1 if there was any.
The clients share this process's GIL and the machine's cores with the server: the numbers are
the stand-in's behaviour under load on this machine, not a capacity figure for TF Serving.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime
import http.client
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MODEL = "diva"


def jpeg(size: int = 64, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.RandomState(seed).randint(0, 256, (size, size, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def export_tiny_model(base_path: str) -> None:
    from diva_tf.serving import export
    from diva_tf.config import Config
    from diva_tf.model.network import build_embedding_model

    cfg = Config(backbone="tiny", backbone_weights="none", crop=32, resize=36, dataset="folder")
    export.export_model(build_embedding_model(cfg, cfg.seed), cfg, base_path, version=1,
                        dataset=cfg.dataset, backbone=cfg.backbone)


def start_stand_in(base_path: str, log) -> tuple[subprocess.Popen, str]:
    """The stand-in on an ephemeral loopback port; (process, its base URL)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "diva_tf.serve", "--model_base_path",
                             base_path, "--model_name", MODEL, "--port", "0"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on"):
        proc.kill()
        raise SystemExit(f"error: the stand-in did not start (its log: {log.name})")
    return proc, f"{line.split()[-1]}/v1/models/{MODEL}"


class Tally:
    """Latencies of completed requests and error counts, shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.non_2xx: collections.Counter = collections.Counter()
        self.connection_errors: collections.Counter = collections.Counter()
        self.connections = 0

    def errors(self) -> int:
        return sum(self.non_2xx.values()) + sum(self.connection_errors.values())


def client(host: str, port: int, path: str, body: bytes, start: threading.Barrier,
           deadline: list[float], tally: Tally, timeout: float) -> None:
    """One keep-alive connection, requests back to back until the deadline."""
    headers = {"Content-Type": "application/json"}
    conn, latencies = None, []
    start.wait()
    while time.monotonic() < deadline[0]:
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            with tally.lock:
                tally.connections += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body, headers)
            reply = conn.getresponse()
            reply.read()
        except (OSError, http.client.HTTPException) as e:
            with tally.lock:
                tally.connection_errors[type(e).__name__] += 1
            conn.close()
            conn = None
            continue
        latencies.append(time.perf_counter() - t0)
        if not 200 <= reply.status < 300:
            with tally.lock:
                tally.non_2xx[reply.status] += 1
    if conn is not None:
        conn.close()
    with tally.lock:
        tally.latencies.extend(latencies)


def run_load(url: str, clients: int, seconds: float, timeout: float) -> tuple[Tally, float, int]:
    """(tally, measured seconds, request body bytes) of `clients` threads for `seconds`."""
    parts = urllib.parse.urlsplit(url)
    path = f"{parts.path}:predict"
    body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg()).decode()}]}).encode()
    warm = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    for _ in range(3):  # first calls of the signature are slower: keep them out of the numbers
        warm.request("POST", path, body, {"Content-Type": "application/json"})
        reply = warm.getresponse()
        if reply.status != 200:
            raise SystemExit(f"error: warm-up request got HTTP {reply.status}: "
                             f"{reply.read()[:200]!r}")
        reply.read()
    warm.close()
    tally, start, deadline = Tally(), threading.Barrier(clients + 1), [0.0]
    threads = [threading.Thread(target=client, args=(parts.hostname, parts.port, path, body, start,
                                                     deadline, tally, timeout))
               for _ in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    return tally, time.perf_counter() - t0, len(body)


def report(tally: Tally, elapsed: float, clients: int, body_bytes: int) -> list[str]:
    ms = np.asarray(tally.latencies) * 1000
    p50, p99 = (np.percentile(ms, [50, 99]) if len(ms) else (float("nan"),) * 2)
    non_2xx, conn = sum(tally.non_2xx.values()), sum(tally.connection_errors.values())
    detail = ", ".join(f"{k}: {v}" for k, v in [*sorted(tally.non_2xx.items()),
                                                *sorted(tally.connection_errors.items())])
    return [
        f"request: POST :predict, one 64x64 JPEG as b64 ({body_bytes} bytes of JSON), "
        f"{clients} keep-alive clients",
        f"clients {clients}  seconds {elapsed:.1f}  requests {len(ms)}  "
        f"requests/s {len(ms) / elapsed:.1f}  p50 {p50:.1f} ms  p99 {p99:.1f} ms",
        f"errors {tally.errors()} (non-2xx {non_2xx}, connection errors {conn})"
        + (f": {detail}" if detail else "") + f"; connections opened {tally.connections}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--url", help="a running stand-in's http://<loopback>:<port>/v1/models/"
                        "<name> (default: start one on a tiny export)")
    parser.add_argument("--timeout", type=float, default=60.0, help="client socket timeout")
    parser.add_argument("--out", help="also write the report here (first line: the command)")
    args = parser.parse_args()
    if not (1 <= args.clients <= 1000 and 0 < args.seconds <= 600):
        print("error: need 1 <= --clients <= 1000 and 0 < --seconds <= 600", file=sys.stderr)
        return 2
    if args.url and urllib.parse.urlsplit(args.url).hostname not in LOOPBACK:
        print(f"error: --url {args.url}: loopback hosts only ({', '.join(LOOPBACK)})",
              file=sys.stderr)
        return 2

    command = "python " + shlex.join(["benchmarks/serve_load.py", *sys.argv[1:]])
    lines = [f"# {command}  ({datetime.datetime.now():%Y-%m-%d %H:%M})"]
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "server.log"), "w") as log:
        proc, url = None, args.url
        if url is None:
            export_tiny_model(os.path.join(tmp, MODEL))
            proc, url = start_stand_in(os.path.join(tmp, MODEL), log)
            lines.append(f"server: python -m diva_tf.serve (default flags) on a tiny "
                         f"untrained export (backbone tiny, 32 px), {url}")
        else:
            lines.append(f"server: {url}")
        try:
            tally, elapsed, body_bytes = run_load(url, args.clients, args.seconds, args.timeout)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    lines += report(tally, elapsed, args.clients, body_bytes)
    lines.append(f"machine: {os.cpu_count()} cores, load average "
                 f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print("\n".join(lines))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if tally.errors() else 0


if __name__ == "__main__":
    sys.exit(main())
