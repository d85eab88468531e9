"""`python -m diva_tf.serve --model_base_path export/models/diva --model_name diva [--port 8501]`:
the LOCAL STAND-IN for TensorFlow Serving's REST API (tests and demos only; see
`diva_tf.serving.stand_in`). It is NOT TensorFlow Serving."""

from __future__ import annotations

if __name__ == "__main__":  # first, before TensorFlow is imported
    from diva_tf.core.quiet import quiet_third_party

    quiet_third_party()

import math
import sys
import threading

from absl import logging

from diva_tf.serving.stand_in import BANNER, Limits, make_server, poll


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model_base_path", "export/models/diva",
                        "Folder of <version>/ SavedModels (TF Serving layout).")
    flags.DEFINE_string("model_name", "diva", "Name in the /v1/models/<name> URLs.")
    flags.DEFINE_string("host", "127.0.0.1", "Bind address (loopback by default: a demo server "
                        "should not be reachable from the network).")
    flags.DEFINE_integer("port", 8501, "REST port (TF Serving's default); 0 = ephemeral.")
    flags.DEFINE_integer("max_request_bytes", Limits.max_request_bytes,
                         "Larger request bodies (chunked ones too) get HTTP 413; 0 = no limit.")
    flags.DEFINE_integer("max_image_pixels", Limits.max_image_pixels,
                         "Images of *_bytes inputs with more pixels (read from their headers, "
                         "before decoding) get HTTP 400; 0 = no limit.")
    flags.DEFINE_float("request_timeout_seconds", Limits.request_timeout,
                       "Close a connection silent this long mid-request (HTTP 408) or idle "
                       "between requests; 0 = never.")
    flags.DEFINE_enum("model_version_policy", "latest", ["latest", "all"],
                      "Serve only the highest version (TF Serving's default) or all of them.")
    flags.DEFINE_float("file_system_poll_wait_seconds", 1.0,
                       "Poll the base path for new versions this often (0 = never).")


_NON_NEGATIVE_FLAGS = ("max_request_bytes", "max_image_pixels", "request_timeout_seconds",
                       "file_system_poll_wait_seconds")


def flag_error(f) -> str | None:
    """The first flag value out of range, as one line (None when all are usable)."""
    for name in _NON_NEGATIVE_FLAGS:
        value = getattr(f, name)
        if not (math.isfinite(value) and value >= 0):
            return f"--{name}={value}: must be a finite number >= 0 (0 = no limit)"
    if not 0 <= f.port <= 65535:
        return f"--port={f.port}: must be in [0, 65535] (0 = ephemeral)"
    return None


def main(argv) -> int:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    return run(flags.FLAGS)


def run(f) -> int:
    """Serve until interrupted, with the flag values `f`; 2 for a bad flag, no model or port."""
    if error := flag_error(f):
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.warning(BANNER)
    try:
        server = make_server(f.model_base_path, f.model_name, f.host, f.port,
                             f.model_version_policy, max_request_bytes=f.max_request_bytes,
                             max_image_pixels=f.max_image_pixels,
                             request_timeout=f.request_timeout_seconds)
    except OSError as e:  # no model, or the port is taken
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    if f.file_system_poll_wait_seconds > 0:
        threading.Thread(target=poll, args=(server.store, f.file_system_poll_wait_seconds, stop),
                         daemon=True).start()
    logging.info("serving model %r from %s at %s/v1/models/%s (%s)", f.model_name,
                 f.model_base_path, server.url, f.model_name, BANNER)
    print(f"listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    from absl import app

    from diva_tf.config.flags import use_short_help

    _define_flags()
    use_short_help(__doc__)
    app.run(main)
