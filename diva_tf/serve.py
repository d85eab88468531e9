"""`python -m diva_tf.serve --export_dir export/models/diva --model_name diva --port 8501
[--index INDEX_DIR] [--workers N]`: serve an export on KServe's model server (`pip install
'diva_tf[serve]'`): TF Serving's REST predict, V2 health/metadata, /metrics, and with --index the
`<model_name>-retrieval` model (see diva_tf.serving.server and diva_tf.serving.retrieval)."""

from __future__ import annotations

if __name__ == "__main__":  # first, before TensorFlow is imported
    from diva_tf.core.quiet import quiet_third_party

    quiet_third_party()

import math
import socket
import sys

from diva_tf.core.cli import define_renamed, reports_errors
from diva_tf.core.errors import ConfigError

_LIMITS = {  # flag -> help, for the fields of diva_tf.serving.images.Limits (0 = no limit)
    "max_request_bytes": "Larger request bodies get HTTP 413.",
    "max_image_pixels": "An image with more pixels (read from its header, before decoding) "
                        "gets HTTP 400.",
    "max_request_pixels": "A request whose images hold more pixels in all gets HTTP 400.",
    "max_decoding_pixels": "Pixels being decoded at once over all requests of a worker; "
                           "requests wait for their share (bounds the server's memory).",
}


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("export_dir", "export/models/diva",
                        "Folder of <version>/ SavedModels (TF Serving layout, its "
                        "--model_base_path); the highest version that loads is served.")
    flags.DEFINE_string("model_name", "diva", "Name in the /v1/models/<name> URLs.")
    flags.DEFINE_integer("port", 8501, "REST port (TF Serving's default), on all interfaces.")
    flags.DEFINE_string("index", None, "Index folder (python -m diva_tf.index build) to serve as "
                        "<model_name>-retrieval; it must have been built by the served version.")
    flags.DEFINE_integer("max_k", 100, "Largest k a retrieval request may ask for.")
    flags.DEFINE_integer("workers", 1, "Server processes (each loads the model).")
    define_renamed("model_base_path", "export_dir")
    from diva_tf.serving.images import Limits

    for name, help_text in _LIMITS.items():
        flags.DEFINE_integer(name, getattr(Limits, name), help_text + " 0 = no limit.")


def flag_error(f) -> str | None:
    """The first flag value out of range, as one line (None when all are usable)."""
    for name in _LIMITS:
        value = getattr(f, name)
        if not (math.isfinite(value) and value >= 0):
            return f"--{name}={value}: must be a number >= 0 (0 = no limit)"
    if not 1 <= f.port <= 65535:
        return f"--port={f.port}: must be in [1, 65535]"
    for name in ("workers", "max_k"):
        if getattr(f, name) < 1:
            return f"--{name}={getattr(f, name)}: must be at least 1"
    return None


def port_error(port: int) -> str | None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            return f"--port={port}: {e.strerror}"
    return None


def import_server():
    """The server modules (KServe, TensorFlow). kserve.model_server parses sys.argv with its own
    flags when imported: ours are hidden from it."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        from diva_tf.serving import retrieval, server
    finally:
        sys.argv = argv
    return server, retrieval


def build_models(f) -> list:
    """The loaded models the flags ask for (ServeError when they cannot be served)."""
    server, retrieval = import_server()
    limits = server.Limits(**{name: getattr(f, name) for name in _LIMITS})
    embedder = server.EmbeddingModel(f.model_name, f.export_dir, limits)
    embedder.load()
    models = [embedder]
    if f.index:
        models.append(retrieval.RetrievalModel(f"{f.model_name}-retrieval", embedder, f.index,
                                               f.max_k))
        models[-1].load()
    return models


def main(argv) -> int:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    return run(flags.FLAGS)


@reports_errors()
def run(f) -> int:
    """Serve until SIGTERM/SIGINT; 2 for a bad flag, a model or index that cannot be served, or
    a port in use."""
    if error := flag_error(f) or port_error(f.port):
        raise ConfigError(error)
    models = build_models(f)
    from diva_tf.serving.server import serve

    names = ", ".join(m.name for m in models)
    print(f"serving {names} (version {models[0].version}) on http://0.0.0.0:{f.port}", flush=True)
    serve(models, f.port, f.workers)
    return 0


if __name__ == "__main__":
    from absl import app

    from diva_tf.config.flags import use_short_help
    from diva_tf.core.cli import parse_flags

    _define_flags()
    use_short_help(__doc__)
    app.run(main, flags_parser=parse_flags)
