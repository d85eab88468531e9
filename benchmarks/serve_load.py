"""Load and memory of `python -m diva_tf.serve` on loopback, beside the old stand-in and a ceiling.

    flock /tmp/diva_bench.lock python benchmarks/serve_load.py \
        --out benchmarks/results/serve_load/kserve_vs_stand_in.txt
    python benchmarks/serve_load.py --servers kserve --clients 32 --seconds 10 --no-memory

Exports a tiny untrained model (backbone `tiny`, 32 px) to a temporary folder, then for each of
--servers starts that server in a subprocess on a free loopback port (stopped at the end):
- `kserve`: this checkout's `python -m diva_tf.serve` (KServe);
- `stand_in`: the hand-written HTTP server the project had before KServe, run from git commit
  STAND_IN_COMMIT (its `diva_tf/` extracted with `git archive` into the temporary folder), so
  both are measured in the same run on the same machine.
Load, for each --clients N: N threads each hold one keep-alive `http.client` connection and POST
`:predict` with one 64x64 JPEG as {"b64": ...}, back to back, for --seconds; a connection error
is counted and the client reconnects. Reported: requests/s, p50/p99 latency, errors (non-2xx +
connection errors) and the server's peak RSS (its process tree, sampled every 50 ms).
Memory (unless --no-memory): 10 concurrent requests each holding one 6000x6000 PNG (36 Mpx, under
the default pixel limit); RSS idle before, peak during, and 5 s after the replies.
Ceiling: the `serving_default` signature called in this process, one thread, no HTTP.
The clients share this process's GIL and the machine's cores with the server: the figures compare
servers on this machine; they are not a capacity figure for a deployment.
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import datetime
import http.client
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "diva"
# the last commit with diva_tf/serving/stand_in.py (the hand-written server KServe replaced)
STAND_IN_COMMIT = "ac9f4379e050f451ac64f426db041cc87bf95f66"
SERVERS = ("stand_in", "kserve")
BIG_SIDE, BIG_REQUESTS = 6000, 10


def jpeg(size: int = 64, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.RandomState(seed).randint(0, 256, (size, size, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def big_png(side: int = BIG_SIDE) -> bytes:
    """A side x side RGB PNG that compresses well (a gradient): small on the wire, 36 Mpx decoded."""
    from PIL import Image

    ramp = np.linspace(0, 255, side).astype(np.uint8)
    pixels = np.broadcast_to(ramp[None, :, None], (side, side, 3)).copy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def predict_body(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(b).decode()} for b in images]}
                      ).encode()


def export_tiny_model(base_path: str) -> None:
    from diva_tf.config import Config
    from diva_tf.model.network import build_embedding_model
    from diva_tf.serving import export

    cfg = Config(backbone="tiny", backbone_weights="none", crop=32, resize=36, dataset="folder")
    export.export_model(build_embedding_model(cfg, cfg.seed), cfg, base_path, version=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the server process and its memory ---------------------------------------------------------
def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (uvicorn workers are child processes)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f
                              if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            pass
    return total


class RssMonitor:
    """Peak of `tree_rss(pid)`, sampled every 50 ms while in the block."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self):
        self.peak = tree_rss(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, tree_rss(self.pid))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def server_command(kind: str, base_path: str, port: int, tmp: str) -> tuple[list[str], dict]:
    """(command, environment) that serves `base_path` as MODEL on `port`."""
    env = {**os.environ, "PYTHONPATH": REPO}
    command = [sys.executable, "-m", "diva_tf.serve", "--export_dir", base_path,
               "--model_name", MODEL, "--port", str(port)]
    if kind == "stand_in":
        old = os.path.join(tmp, "stand_in_src")
        os.makedirs(old, exist_ok=True)
        archive = subprocess.run(["git", "-C", REPO, "archive", STAND_IN_COMMIT, "diva_tf"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        env["PYTHONPATH"] = old
    return command, env


def start_server(kind: str, base_path: str, tmp: str, log) -> tuple[subprocess.Popen, int]:
    """The server on a free loopback port, once its model answers; (process, port)."""
    port = free_port()
    command, env = server_command(kind, base_path, port, tmp)
    proc = subprocess.Popen(command, cwd=tmp, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", f"/v1/models/{MODEL}")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"error: the {kind} server did not start (its log: {log.name})")


def stop_server(proc: subprocess.Popen) -> int:
    proc.terminate()
    return proc.wait(60)


# ---- load --------------------------------------------------------------------------------------
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


def post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", f"/v1/models/{MODEL}:predict", body,
                 {"Content-Type": "application/json"})
    reply = conn.getresponse()
    return reply.status, reply.read()


def client(port: int, body: bytes, start: threading.Barrier, deadline: list[float],
           tally: Tally, timeout: float) -> None:
    """One keep-alive connection, requests back to back until the deadline."""
    conn, latencies = None, []
    start.wait()
    while time.monotonic() < deadline[0]:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            with tally.lock:
                tally.connections += 1
        t0 = time.perf_counter()
        try:
            status, _ = post(conn, body)
        except (OSError, http.client.HTTPException) as e:
            with tally.lock:
                tally.connection_errors[type(e).__name__] += 1
            conn.close()
            conn = None
            continue
        latencies.append(time.perf_counter() - t0)
        if not 200 <= status < 300:
            with tally.lock:
                tally.non_2xx[status] += 1
    if conn is not None:
        conn.close()
    with tally.lock:
        tally.latencies.extend(latencies)


def run_load(port: int, clients: int, seconds: float, timeout: float) -> tuple[Tally, float]:
    """(tally, measured seconds) of `clients` threads for `seconds`."""
    body = predict_body([jpeg()])
    warm = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    for _ in range(3):  # first calls of the signature are slower: keep them out of the numbers
        status, reply = post(warm, body)
        if status != 200:
            raise SystemExit(f"error: warm-up request got HTTP {status}: {reply[:200]!r}")
    warm.close()
    tally, start, deadline = Tally(), threading.Barrier(clients + 1), [0.0]
    threads = [threading.Thread(target=client, args=(port, body, start, deadline, tally, timeout))
               for _ in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    return tally, time.perf_counter() - t0


def load_line(kind: str, tally: Tally, elapsed: float, clients: int, peak: int) -> str:
    ms = np.asarray(tally.latencies) * 1000
    p50, p99 = np.percentile(ms, [50, 99]) if len(ms) else (float("nan"),) * 2
    detail = ", ".join(f"{k}: {v}" for k, v in [*sorted(tally.non_2xx.items()),
                                                *sorted(tally.connection_errors.items())])
    return (f"{kind:9s} clients {clients:4d}  requests/s {len(ms) / elapsed:7.1f}  "
            f"p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  errors {tally.errors()}"
            + (f" ({detail})" if detail else "")
            + f"  connections {tally.connections}  peak RSS {peak / 2**20:.0f} MB")


# ---- memory under huge images -------------------------------------------------------------------
def run_memory(kind: str, proc: subprocess.Popen, port: int, timeout: float) -> str:
    """RSS before, at the peak of and 5 s after BIG_REQUESTS concurrent one-big-PNG requests."""
    body = predict_body([big_png()])

    def one(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            return post(conn, body)[0]
        except (OSError, http.client.HTTPException) as e:
            return type(e).__name__
        finally:
            conn.close()

    idle = tree_rss(proc.pid)
    t0 = time.perf_counter()
    with RssMonitor(proc.pid) as rss, concurrent.futures.ThreadPoolExecutor(BIG_REQUESTS) as pool:
        statuses = collections.Counter(pool.map(one, range(BIG_REQUESTS)))
    elapsed = time.perf_counter() - t0
    time.sleep(5)
    after = tree_rss(proc.pid)
    mb = lambda b: f"{b / 2**20:.0f} MB"  # noqa: E731
    return (f"{kind:9s} {BIG_REQUESTS} x {BIG_SIDE}x{BIG_SIDE} PNG ({len(body)} bytes of JSON "
            f"each): replies {dict(statuses)} in {elapsed:.1f} s; RSS idle {mb(idle)}, "
            f"peak {mb(rss.peak)} (+{mb(rss.peak - idle)}), 5 s after {mb(after)} "
            f"(+{mb(after - idle)})")


# ---- the ceiling -------------------------------------------------------------------------------
def ceiling(base_path: str, seconds: float) -> str:
    """Calls/s of the signature in this process, one image per call, one thread."""
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(base_path, "1"))
    fn, batch = loaded.signatures["serving_default"], tf.constant([jpeg()])
    for _ in range(3):
        fn(image_bytes=batch)
    times, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        fn(image_bytes=batch)["embedding"].numpy()
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1000
    return (f"ceiling   in-process serving_default, 1 thread, 1 image per call: calls/s "
            f"{len(ms) / sum(times):.1f}  p50 {np.percentile(ms, 50):.2f} ms  "
            f"p99 {np.percentile(ms, 99):.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated, of {', '.join(SERVERS)}")
    parser.add_argument("--clients", default="32,128", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=60.0, help="per client count")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the huge-image memory test")
    parser.add_argument("--timeout", type=float, default=120.0, help="client socket timeout")
    parser.add_argument("--out", help="also write the report here (first line: the command)")
    args = parser.parse_args()
    try:
        servers = args.servers.split(",")
        clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        servers, clients = [], []
    if (not set(servers) <= set(SERVERS) or not clients
            or not all(1 <= c <= 1000 for c in clients) or not 0 < args.seconds <= 600):
        print(f"error: need --servers of {', '.join(SERVERS)}, --clients in [1, 1000], "
              "0 < --seconds <= 600", file=sys.stderr)
        return 2

    command = "python " + shlex.join(["benchmarks/serve_load.py", *sys.argv[1:]])
    lines = [f"# {command}  ({datetime.datetime.now():%Y-%m-%d %H:%M})",
             "model: tiny untrained export (backbone tiny, 32 px); request: POST :predict, one "
             f"64x64 JPEG as b64 ({len(predict_body([jpeg()]))} bytes of JSON), keep-alive "
             f"clients, {args.seconds:g} s per client count; stand_in = diva_tf at "
             f"{STAND_IN_COMMIT[:7]}; servers with default flags"]
    errors = 0
    with tempfile.TemporaryDirectory() as tmp:
        base_path = os.path.join(tmp, MODEL)
        export_tiny_model(base_path)
        for kind in servers:
            with open(os.path.join(tmp, f"{kind}.log"), "w+") as log:
                proc, port = start_server(kind, base_path, tmp, log)
                try:
                    for n in clients:
                        with RssMonitor(proc.pid) as rss:
                            tally, elapsed = run_load(port, n, args.seconds, args.timeout)
                        errors += tally.errors()
                        lines.append(load_line(kind, tally, elapsed, n, rss.peak))
                        print(lines[-1], flush=True)
                    if args.memory:
                        lines.append(run_memory(kind, proc, port, args.timeout))
                        print(lines[-1], flush=True)
                finally:
                    code = stop_server(proc)
                lines.append(f"{kind:9s} SIGTERM -> exit code {code}")
        lines.append(ceiling(base_path, min(args.seconds, 20.0)))
    lines.append(f"machine: {os.cpu_count()} cores, load average "
                 f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print("\n".join(lines[-2:]))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
