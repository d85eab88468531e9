"""The exported SavedModel as a KServe model: `kserve.ModelServer` answers TF Serving's REST
predict (KServe's V1 protocol: `POST /v1/models/NAME:predict`, `{"instances"|"inputs"}`), the V2
Open Inference Protocol's health and metadata routes and Prometheus `/metrics`; the same class runs
as a custom predictor of a KServe `InferenceService`.

Added to KServe's routes, for TF Serving clients: `GET /v1/models/NAME[/versions/V]` answers
KServe's `{"name", "ready"}` and TF Serving's `model_version_status` (the served version
AVAILABLE, newer ones that failed to load END with their error), and
`POST /v1/models/NAME/versions/V:predict` serves V when it is the served version (404 otherwise).
Every refused request is `{"error": message}` with a 4xx status (`RequestError`, unknown routes,
bodies over `--max_request_bytes`); images are bounded before decoding (`images`).

TensorFlow is imported when a model loads, not with this module: KServe's worker processes
(`--workers` > 1) unpickle the models before they answer KServe's 5-second liveness ping, so a
worker loads its copy on a thread (`load_in_background`) and requests wait for it.
"""

from __future__ import annotations

import asyncio
import os
import threading

import kserve
import numpy as np
import orjson
from absl import logging
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.protocol.infer_type import InferRequest
from starlette.exceptions import HTTPException

from diva_tf.core.errors import DivaError
from diva_tf.serving import rest_json
from diva_tf.serving.errors import BadRequest, NotFound, RequestError, TooLarge
from diva_tf.serving.images import Limits, PixelBudget, request_pixels
from diva_tf.serving.index import tf_reason

V2_TYPES = {"string": "BYTES", "float32": "FP32"}  # TF dtype name -> V2 datatype


class ServeError(DivaError):
    """The server cannot start: no version loads, or the index does not match the model."""


# ---- loading --------------------------------------------------------------------------------
def load_latest(base_path: str) -> tuple:
    """The highest version that loads, and {newer version: why it did not load}; each failure is
    logged once. A broken new export never takes the model offline while an older one loads."""
    from diva_tf.serving.export import list_versions, load_export

    failures = {}
    for version in reversed(list_versions(base_path)):
        try:
            export = load_export(os.path.join(base_path, str(version)))
        except Exception as e:  # noqa: BLE001 - any broken version: try the next older one
            failures[version] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
            logging.error("%s version %d does not load, serving an older one: %s", base_path,
                          version, failures[version])
            continue
        logging.info("loaded version %d from %s", version, base_path)
        return export, failures
    raise ServeError(f"--export_dir {base_path}: no loadable <version>/saved_model.pb"
                     + (f" ({'; '.join(f'{v}: {m}' for v, m in failures.items())})"
                        if failures else ""))


def request_doc(payload) -> dict:
    """The predict body as a JSON object. KServe parses JSON bodies itself; bodies sent with
    another Content-Type (curl -d sends form encoding) arrive as bytes and are read as JSON too,
    as TF Serving does."""
    if isinstance(payload, (bytes, str)):
        if not payload:
            raise BadRequest("JSON Parse error: The document is empty")
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"JSON Parse error: {e}") from None
    if isinstance(payload, InferRequest):
        raise BadRequest("V2 inference is not served: POST TF Serving's format to "
                         "/v1/models/NAME:predict (V2 health and metadata are)")
    if not isinstance(payload, dict):
        raise BadRequest(f"JSON Value: {orjson.dumps(payload)[:200].decode()} Is not object")
    return payload


async def in_thread(fn, *args):
    """Run blocking work (TensorFlow) off the event loop, on the server's thread pool."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# ---- the embedding model ------------------------------------------------------------------
class EmbeddingModel(kserve.Model):
    """`serving_default` (encoded images) and `serve_images` (float pixels) of the highest version
    of `base_path` that loads."""

    def __init__(self, name: str, base_path: str, limits: Limits = Limits()):
        super().__init__(name)
        self.base_path, self.limits = base_path, limits
        self.export = None  # diva_tf.serving.export.LoadedExport
        self.failures: dict[int, str] = {}
        self.budget = PixelBudget(limits.max_decoding_pixels)
        self.loaded = threading.Event()
        self.lean = None  # diva_tf.serving.lean.LeanPath, when verified

    def load(self) -> bool:
        from diva_tf.serving import lean

        self.export, self.failures = load_latest(self.base_path)
        self.lean = lean.verified(self.export)
        if self.lean is None:
            logging.warning("large images go through serving_default (its float copy of each "
                            "image costs ~4x the lean path's memory): the lean path does not "
                            "reproduce it for this export")
        self.ready = True
        self.loaded.set()
        return self.ready

    @property
    def version(self) -> int:
        return self.export.version

    def __getstate__(self):
        """Sent to KServe's worker processes (--workers > 1) without TensorFlow objects."""
        return {"name": self.name, "base_path": self.base_path, "limits": self.limits}

    def __setstate__(self, state):
        self.__init__(**state)
        install(kserve.model_server.app, self.limits, [self])
        load_in_background(self)

    def signature(self, name: str):
        from diva_tf.serving.export import BYTES_SIGNATURE

        name = name or BYTES_SIGNATURE
        if not isinstance(name, str) or name not in self.export.root.signatures:
            raise BadRequest(f'Serving signature name: "{str(name)[:100]}" not found in '
                             "signature def")
        return self.export.root.signatures[name]

    def status(self) -> dict:
        """TF Serving's status reply (plus KServe's name and ready)."""
        states = {self.version: ("AVAILABLE", "OK", "")}
        states.update({v: ("END", "UNKNOWN", m) for v, m in self.failures.items()})
        return {"name": self.name, "ready": self.ready, "model_version_status": [
            {"version": str(v), "state": state, "status": {"error_code": code,
                                                           "error_message": message}}
            for v, (state, code, message) in sorted(states.items(), reverse=True)]}

    def _types(self, specs) -> list[dict]:
        return [{"name": name, "datatype": V2_TYPES.get(spec.dtype.name, spec.dtype.name.upper()),
                 "shape": [-1 if d is None else d for d in spec.shape]}
                for name, spec in specs.items()]

    def get_input_types(self) -> list[dict]:
        return self._types(self.signature("").structured_input_signature[1])

    def get_output_types(self) -> list[dict]:
        return self._types(self.signature("").structured_outputs)

    async def run(self, fn, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call a signature on checked inputs, holding the pixels of its encoded images in the
        server-wide budget; the graph's own refusals (an undecodable image) are BadRequest.
        Requests with large images take the lean path (same outputs, less memory)."""
        import tensorflow as tf

        from diva_tf.serving.export import BYTES_INPUT
        from diva_tf.serving.lean import LARGE_PIXELS

        specs = fn.structured_input_signature[1]
        pixels = sum(request_pixels(list(v.flat), self.limits.max_image_pixels,
                                    self.limits.max_request_pixels)
                     for k, v in inputs.items() if specs[k].dtype == tf.string)
        if self.lean and BYTES_INPUT in inputs and pixels >= LARGE_PIXELS:
            fn = self.lean

        def call():
            outputs = fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
            return {k: v.numpy() for k, v in outputs.items()}

        async with self.budget.hold(pixels):
            try:
                return await in_thread(call)
            except tf.errors.InvalidArgumentError as e:
                raise BadRequest(tf_reason(e.message)) from None

    async def embed(self, images: list[bytes]) -> np.ndarray:
        """Embeddings of encoded images (`serving_default`), for the retrieval model."""
        from diva_tf.serving.export import BYTES_INPUT, EMBEDDING_OUTPUT

        await ensure_loaded(self)
        fn = self.signature("")
        return (await self.run(fn, {BYTES_INPUT: np.array(images, object)}))[EMBEDDING_OUTPUT]

    async def predict(self, payload, headers=None, response_headers=None) -> dict:
        await ensure_loaded(self)
        doc = request_doc(payload)
        fn = self.signature(doc.get("signature_name", ""))
        inputs, fmt = rest_json.request_inputs(doc, fn.structured_input_signature[1])
        return rest_json.response_body(await self.run(fn, inputs), fmt)


def load_in_background(model) -> None:
    """Load `model` on a thread (in a KServe worker process, which must answer KServe's liveness
    ping meanwhile); its requests wait for it (`ensure_loaded`). It is ready: its parent loaded
    the same files."""
    model.ready = True

    def work():
        try:
            model.load()
        except Exception:  # noqa: BLE001 - logged; the worker's requests then fail
            logging.exception("worker %d could not load %s", os.getpid(), model.name)
            model.loaded.set()

    threading.Thread(target=work, daemon=True).start()


async def ensure_loaded(model) -> None:
    if not model.loaded.is_set():
        await in_thread(model.loaded.wait)


# ---- KServe's FastAPI app: TF Serving's routes, JSON errors, body limit -----------------------
def served_model(name: str):
    model = kserve.model_server.app.state.diva_models.get(name)
    if model is None:
        raise NotFound(f"Model with name {name} does not exist.")
    return model


async def loaded_model(name: str, version: str | None = None):
    """The served model `name` once loaded; NotFound unless it serves `version` (if given)."""
    model = served_model(name)
    await ensure_loaded(model)
    if version is not None and version != str(model.version):
        raise NotFound(f"model {name} has no version {version[:40]} (serving version "
                       f"{model.version})")
    return model


async def model_status(model_name: str) -> dict:
    return (await loaded_model(model_name)).status()


async def version_status(model_name: str, version: str) -> dict:
    status = (await loaded_model(model_name, version)).status()
    status["model_version_status"] = [s for s in status["model_version_status"]
                                      if s["version"] == version]
    return status


async def version_predict(model_name: str, version: str, request: Request) -> JSONResponse:
    model = await loaded_model(model_name, version)
    return JSONResponse(await model.predict(await request.body()))


async def request_error(_, e: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=e.status)


async def http_error(_, e: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(e.detail)}, status_code=e.status_code,
                        headers=getattr(e, "headers", None))


async def validation_error(_, e: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": f"invalid request: {e.errors()}"[:500]}, status_code=400)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413, whether announced by
    Content-Length (refused before parsing; drained unless absurdly large, so the client gets the
    reply rather than a reset) or sent in chunks (refused once it passes the limit)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _error(self, size: str) -> TooLarge:
        return TooLarge(f"request body of {size} bytes exceeds --max_request_bytes="
                        f"{self.max_bytes}")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.max_bytes:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            if int(length) <= 16 * self.max_bytes:  # drained, so the client reads the reply
                while (await receive()).get("more_body"):
                    pass
            return await (await request_error(None, self._error(length.decode())))(
                scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self._error(f"at least {seen}")
            return message

        await self.app(scope, limited, send)


def install(app: FastAPI, limits: Limits, models=()) -> None:
    """Add the routes, handlers and middleware above to KServe's app (before KServe adds its own
    routes, so `GET /v1/models/NAME` is ours), once per process."""
    registry = getattr(app.state, "diva_models", None)
    if registry is None:
        registry = app.state.diva_models = {}
        app.add_api_route("/v1/models/{model_name}", model_status, methods=["GET"])
        app.add_api_route("/v1/models/{model_name}/versions/{version}", version_status,
                          methods=["GET"])
        app.add_api_route("/v1/models/{model_name}/versions/{version}:predict", version_predict,
                          methods=["POST"], response_model=None)
        app.add_exception_handler(RequestError, request_error)
        app.add_exception_handler(HTTPException, http_error)
        app.add_exception_handler(RequestValidationError, validation_error)
        app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    registry.update({m.name: m for m in models})


def quiet_request_logs() -> None:
    """No log line per request (KServe's timing lines, uvicorn's access log): under load they
    cost more than a small model's inference. Errors are still logged. Called after ModelServer()
    (which configures logging in this process); KServe's worker processes configure theirs from
    `args.log_config_file`."""
    import copy
    import logging as std_logging
    import warnings

    from fastapi.exceptions import FastAPIDeprecationWarning
    from kserve.logging import KSERVE_LOG_CONFIG

    config = copy.deepcopy(KSERVE_LOG_CONFIG)
    for name in ("kserve.trace", "uvicorn.access"):
        config["loggers"].setdefault(name, {})["level"] = "WARNING"
        std_logging.getLogger(name).setLevel(std_logging.WARNING)
    kserve.model_server.args.log_config_file = config
    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)  # KServe's ORJSONResponse


def serve(models: list, port: int, workers: int = 1, grace_seconds: int = 30) -> None:
    """Run KServe's ModelServer on `models` (loaded) until SIGTERM/SIGINT: it stops accepting,
    finishes the requests in flight (up to `grace_seconds`), then returns."""
    install(kserve.model_server.app, models[0].limits, models)
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=workers,
                                grace_period=grace_seconds, enable_latency_logging=False)
    quiet_request_logs()
    server.start(models)

