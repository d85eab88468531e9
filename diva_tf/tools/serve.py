"""A LOCAL STAND-IN for TensorFlow Serving's REST API, for tests and demos. It is NOT TF Serving.

`python -m diva_tf.tools.serve --model_base_path export/models/diva --model_name diva [--port 8501]
[--host 127.0.0.1]`

It answers the REST calls of TF Serving (`docs/api_rest.md` of tensorflow/serving) from a model
base path in TF Serving layout, with TF Serving's JSON shapes, error messages and status codes:
- `GET  /v1/models/<name>[/versions/<v>]`            model status
- `GET  /v1/models/<name>[/versions/<v>]/metadata`   signature defs
- `POST /v1/models/<name>[/versions/<v>]:predict`    `{"signature_name", "instances"|"inputs"}`
Like TF Serving's default version policy it serves the highest version and picks up newly
published versions (polling the base path). Use the real `tensorflow_model_server` (see
export/README.md) for anything beyond a laptop: this server has no batching, no gRPC, no auth, no
monitoring, and binds to loopback by default.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from diva_tf.export import list_versions

BANNER = ("LOCAL STAND-IN for TensorFlow Serving's REST API (tests/demos only); "
          "this is NOT TensorFlow Serving")
DEFAULT_SIGNATURE = "serving_default"
PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)",
                          re.I)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?(?:/(metadata))?", re.I)

# TF error code -> HTTP status, as TF Serving's http_server.cc maps them.
_HTTP_OF_TF_CODE = {
    tf.errors.CANCELLED: 499, tf.errors.UNKNOWN: 500, tf.errors.INVALID_ARGUMENT: 400,
    tf.errors.DEADLINE_EXCEEDED: 504, tf.errors.NOT_FOUND: 404, tf.errors.ALREADY_EXISTS: 409,
    tf.errors.PERMISSION_DENIED: 403, tf.errors.RESOURCE_EXHAUSTED: 429,
    tf.errors.FAILED_PRECONDITION: 400, tf.errors.ABORTED: 409, tf.errors.OUT_OF_RANGE: 400,
    tf.errors.UNIMPLEMENTED: 501, tf.errors.INTERNAL: 500, tf.errors.UNAVAILABLE: 503,
    tf.errors.DATA_LOSS: 500, tf.errors.UNAUTHENTICATED: 401,
}


class RestError(Exception):
    """An error reply: HTTP status + TF Serving's `{"error": message}` body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = int(status), message


def bad_request(message: str) -> RestError:
    return RestError(HTTPStatus.BAD_REQUEST, message)


# ---- routing --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Route:
    kind: str  # "status" | "metadata" | "predict" | "classify" | "regress"
    model: str
    version: int | None


def parse_route(method: str, path: str) -> Route:
    """Match TF Serving's REST URL patterns; anything else is a malformed request (400)."""
    path = path.split("?", 1)[0]
    if method == "POST" and (m := PREDICT_PATH.fullmatch(path)):
        return Route(m.group(3).lower(), m.group(1), _version(m.group(2)))
    if method == "GET" and (m := STATUS_PATH.fullmatch(path)):
        if not m.group(1):
            raise bad_request("Missing model name in request.")
        return Route("metadata" if m.group(3) else "status", m.group(1), _version(m.group(2)))
    raise bad_request(f"Malformed request: {method} {path}")


def _version(text: str | None) -> int | None:
    return None if text is None else int(text)


# ---- JSON <-> tensors -----------------------------------------------------------------------
def parse_json_body(body: bytes) -> dict:
    if not body:
        raise bad_request("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad_request(f"JSON Parse error: Invalid encoding in string. at offset: {e.start}"
                          ) from None
    except json.JSONDecodeError as e:
        raise bad_request(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    if not isinstance(doc, dict):
        raise bad_request(f"JSON Value: {json.dumps(doc)[:200]} Is not object")
    return doc


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _b64decode(value: dict) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("Unable to base64 decode") from None


def _is_number_of(value, dtype: tf.DType) -> bool:
    if dtype == tf.bool or isinstance(value, bool):
        return dtype == tf.bool and isinstance(value, bool)
    if dtype.is_integer:
        return isinstance(value, int)
    return dtype.is_floating and isinstance(value, (int, float))


def _leaves(value, dtype: tf.DType):
    """A JSON value (nested lists) -> the same nesting with values of `dtype`."""
    if isinstance(value, list):
        return [_leaves(v, dtype) for v in value]
    if dtype == tf.string:
        if _is_b64(value):
            return _b64decode(value)
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            raise bad_request(f"JSON Value: {json.dumps(value)[:200]} not formatted correctly "
                              "for base64 data")
    elif _is_number_of(value, dtype):
        return value
    raise bad_request(f"JSON Value: {json.dumps(value)[:200]} is not of expected type: "
                      f"{dtype.name}")


def _numeric_fast_path(value, dtype: tf.DType) -> np.ndarray | None:
    """Dense numeric JSON straight to numpy (no per-element Python); None if it needs checking."""
    if dtype == tf.string or dtype == tf.bool:
        return None
    try:
        array = np.array(value)
    except ValueError:
        return None
    ok = "iu" if dtype.is_integer else "fiu"
    return array.astype(dtype.as_numpy_dtype) if array.dtype.kind in ok else None


def to_array(value, spec: tf.TensorSpec) -> np.ndarray:
    """A JSON tensor value -> a dense array checked against the signature's shape."""
    array = _numeric_fast_path(value, spec.dtype)
    if array is None:
        numpy_dtype = object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
        nested = _leaves(value, spec.dtype)
        try:
            array = np.array(nested, dtype=numpy_dtype)
        except ValueError:
            array = None
        ragged = array is None or (numpy_dtype is object
                                   and any(isinstance(v, list) for v in array.flat))
        if ragged:
            raise bad_request("Encountered list at unexpected size: the nested lists are ragged")
    if not spec.shape.is_compatible_with(array.shape):
        raise bad_request(f"Expecting shape {spec.shape} for input {spec.name!r} but got: "
                          f"{list(array.shape)}")
    return array


def request_inputs(doc: dict, specs: dict[str, tf.TensorSpec]) -> tuple[dict, str]:
    """(input name -> array, "row" | "columnar") from a predict request body, as TF Serving."""
    has_rows, has_cols = "instances" in doc, "inputs" in doc
    if has_rows and has_cols:
        raise bad_request("Not formatted correctly expecting only one of 'inputs' or "
                          "'instances' keys to exist")
    if has_rows:
        return _row_inputs(doc["instances"], specs), "row"
    if has_cols:
        return _columnar_inputs(doc["inputs"], specs), "columnar"
    raise bad_request("Missing 'inputs' or 'instances' key")


def _is_named(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _row_inputs(instances, specs) -> dict:
    if not isinstance(instances, list):
        raise bad_request("Excepting 'instances' to be an list/array")
    if not instances:
        raise bad_request("No values in 'instances' array")
    names = set(specs)
    if not _is_named(instances[0]):
        if len(specs) > 1:
            raise bad_request("instances is a plain list, but expecting list of objects as "
                              "multiple input tensors required as per tensorinfo_map")
        (name,) = specs
        if any(_is_named(x) for x in instances):
            raise bad_request("Expecting value/list but got object in 'instances' list")
        return {name: to_array(instances, specs[name])}
    for i, inst in enumerate(instances):
        if not _is_named(inst) or set(inst) != names:
            raise bad_request(f"Failed to process element: {i} of 'instances' list. JSON object "
                              f"keys must be equal to: {','.join(sorted(names))}")
    return {name: to_array([inst[name] for inst in instances], spec)
            for name, spec in specs.items()}


def _columnar_inputs(inputs, specs) -> dict:
    if not _is_named(inputs):
        if len(specs) > 1:
            raise bad_request("inputs is a plain value/list, but expecting an object as multiple "
                              "input tensors required as per tensorinfo_map")
        (name,) = specs
        return {name: to_array(inputs, specs[name])}
    missing = [n for n in specs if n not in inputs]
    if missing:
        raise bad_request(f"Missing named input: {missing[0]} in 'inputs' object.")
    return {name: to_array(inputs[name], spec) for name, spec in specs.items()}


def _jsonable(name: str, array: np.ndarray):
    """Output tensor -> JSON values; `*_bytes` string outputs travel as {"b64": ...}."""
    if array.dtype == object:
        if name.endswith("_bytes"):
            encode = lambda b: {"b64": base64.b64encode(b).decode()}  # noqa: E731
        else:
            encode = lambda b: b.decode("utf-8", "replace")  # noqa: E731
        return np.vectorize(encode, otypes=[object])(array).tolist()
    return array.tolist()


def response_body(outputs: dict[str, np.ndarray], fmt: str) -> dict:
    """{"predictions": ...} for row requests, {"outputs": ...} for columnar ones (one output:
    its value, unnamed; several: named)."""
    values = {name: _jsonable(name, np.asarray(a)) for name, a in sorted(outputs.items())}
    if fmt == "columnar":
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    n = len(next(iter(values.values())))
    return {"predictions": [{name: v[i] for name, v in values.items()} for i in range(n)]}


# ---- models ---------------------------------------------------------------------------------
def signature_defs(version_dir: str) -> dict:
    """The serving meta graph's signature defs as proto3 JSON (TF Serving's metadata shape)."""
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = next(g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags)
    return {name: json_format.MessageToDict(sig, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)
            for name, sig in graph.signature_def.items()}


@dataclasses.dataclass
class Servable:
    version: int
    version_dir: str
    root: object  # the loaded SavedModel; owns the variables the signatures read

    def __post_init__(self):
        self.signature_defs = signature_defs(self.version_dir)

    def signature(self, name: str):
        name = name or DEFAULT_SIGNATURE
        if name not in self.root.signatures:
            raise bad_request(f'Serving signature name: "{name}" not found in signature def')
        return self.root.signatures[name]

    def predict(self, doc: dict) -> dict:
        name = doc.get("signature_name", "")
        if not isinstance(name, str):
            raise bad_request("'signature_name' key must be a string value.")
        fn = self.signature(name)
        specs = fn.structured_input_signature[1]
        inputs, fmt = request_inputs(doc, specs)
        try:
            outputs = fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
        except tf.errors.OpError as e:
            raise RestError(_HTTP_OF_TF_CODE.get(e.error_code, 500), e.message) from None
        except (TypeError, ValueError) as e:
            raise bad_request(str(e)) from None
        return response_body({k: v.numpy() for k, v in outputs.items()}, fmt)


class ModelStore:
    """The versions of one model loaded from its base path, per TF Serving's version policy."""

    def __init__(self, name: str, base_path: str, policy: str = "latest"):
        self.name, self.base_path, self.policy = name, base_path, policy
        self._servables: dict[int, Servable] = {}
        self._lock = threading.Lock()

    def wanted(self) -> list[int]:
        versions = list_versions(self.base_path)
        return versions if self.policy == "all" else versions[-1:]

    def refresh(self) -> list[int]:
        """Load newly published versions, drop those the policy no longer serves."""
        from absl import logging

        wanted = self.wanted()
        loaded = {}
        for v in wanted:
            if v in self._servables:
                continue
            path = os.path.join(self.base_path, str(v))
            try:
                loaded[v] = Servable(v, path, tf.saved_model.load(path))
                logging.info("loaded %s version %d from %s", self.name, v, path)
            except Exception as e:  # a broken version must not take the server down
                logging.error("could not load %s: %s", path, e)
        with self._lock:
            kept = {v: s for v, s in self._servables.items() if v in wanted}
            self._servables = {**kept, **loaded}
            return sorted(self._servables)

    def _check_name(self, name: str) -> None:
        if name != self.name:
            raise RestError(HTTPStatus.NOT_FOUND, f"Could not find any versions of model {name}")

    def servable(self, name: str, version: int | None) -> Servable:
        with self._lock:
            servables = dict(self._servables)
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        if name != self.name or not servables or (version is not None and version not in servables):
            raise RestError(HTTPStatus.NOT_FOUND, f"Servable not found for request: {request}")
        return servables[max(servables) if version is None else version]

    def status(self, name: str, version: int | None) -> dict:
        self._check_name(name)
        with self._lock:
            versions = sorted(self._servables, reverse=True)
        if version is not None:
            if version not in versions:
                raise RestError(HTTPStatus.NOT_FOUND,
                                f"Could not find version {version} of model {name}")
            versions = [version]
        if not versions:
            raise RestError(HTTPStatus.NOT_FOUND, f"Could not find any versions of model {name}")
        return {"model_version_status": [
            {"version": str(v), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}
            for v in versions]}

    def metadata(self, name: str, version: int | None) -> dict:
        servable = self.servable(name, version)
        spec = {"name": name, "signature_name": "", "version": str(servable.version)}
        return {"model_spec": spec,
                "metadata": {"signature_def": {"signature_def": servable.signature_defs}}}

    def handle(self, route: Route, body: bytes) -> dict:
        if route.kind == "status":
            return self.status(route.model, route.version)
        if route.kind == "metadata":
            return self.metadata(route.model, route.version)
        if route.kind != "predict":
            raise RestError(HTTPStatus.NOT_IMPLEMENTED,
                            f"The stand-in server does not implement :{route.kind}")
        servable = self.servable(route.model, route.version)
        return servable.predict(parse_json_body(body))


# ---- HTTP -----------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server: "StandInServer"
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._serve()

    def do_POST(self):
        self._serve()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _serve(self):
        try:
            status, reply = HTTPStatus.OK, self.server.store.handle(
                parse_route(self.command, self.path), self._body())
        except RestError as e:
            status, reply = e.status, {"error": e.message}
        except Exception as e:  # noqa: BLE001 - a request must never kill the server
            status, reply = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"}
        self._reply(status, reply)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        limit = self.server.max_request_bytes
        if limit and length > limit:
            self._discard(length)
            raise RestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"Request body of {length} bytes exceeds the limit of {limit} bytes "
                            "(--max_request_bytes)")
        return self.rfile.read(length) if length > 0 else b""

    def _discard(self, length: int, chunk: int = 1 << 20) -> None:
        """Drain a refused body (so the client reads our reply instead of a reset connection),
        unless it is absurdly large; then just close."""
        self.close_connection = True
        if length > 16 * self.server.max_request_bytes:
            return
        while length > 0:
            got = len(self.rfile.read(min(chunk, length)))
            if not got:
                return
            length -= got

    def _reply(self, status: int, reply: dict) -> None:
        data = json.dumps(reply, indent=1).encode()
        self.send_response(int(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        from absl import logging

        logging.debug("%s %s", self.address_string(), fmt % args)


class StandInServer(ThreadingHTTPServer):
    """ThreadingHTTPServer bound to one ModelStore."""

    daemon_threads = True

    def __init__(self, store: ModelStore, host: str = "127.0.0.1", port: int = 8501,
                 max_request_bytes: int = 64 << 20):
        self.store, self.max_request_bytes = store, max_request_bytes
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(model_base_path: str, model_name: str, host: str = "127.0.0.1", port: int = 8501,
                max_request_bytes: int = 64 << 20, policy: str = "latest") -> StandInServer:
    """Load the model and bind (port 0 = ephemeral); call serve_forever() to answer requests."""
    store = ModelStore(model_name, model_base_path, policy)
    if not store.refresh():
        raise FileNotFoundError(f"no loadable <version>/saved_model.pb under {model_base_path}")
    return StandInServer(store, host, port, max_request_bytes)


def _poll(store: ModelStore, seconds: float, stop: threading.Event) -> None:
    while not stop.wait(seconds):
        store.refresh()


# ---- CLI ------------------------------------------------------------------------------------
def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model_base_path", "export/models/diva",
                        "Folder of <version>/ SavedModels (TF Serving layout).")
    flags.DEFINE_string("model_name", "diva", "Name in the /v1/models/<name> URLs.")
    flags.DEFINE_string("host", "127.0.0.1", "Bind address (loopback by default: a demo server "
                        "should not be reachable from the network).")
    flags.DEFINE_integer("port", 8501, "REST port (TF Serving's default); 0 = ephemeral.")
    flags.DEFINE_integer("max_request_bytes", 64 << 20, "Larger request bodies get HTTP 413.")
    flags.DEFINE_enum("model_version_policy", "latest", ["latest", "all"],
                      "Serve only the highest version (TF Serving's default) or all of them.")
    flags.DEFINE_float("file_system_poll_wait_seconds", 1.0,
                       "Poll the base path for new versions this often (0 = never).")


def main(argv) -> int:
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    logging.warning(BANNER)
    try:
        server = make_server(f.model_base_path, f.model_name, f.host, f.port, f.max_request_bytes,
                             f.model_version_policy)
    except OSError as e:  # no model, or the port is taken
        logging.error("%s", e)
        return 2
    stop = threading.Event()
    if f.file_system_poll_wait_seconds > 0:
        threading.Thread(target=_poll, args=(server.store, f.file_system_poll_wait_seconds, stop),
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

    _define_flags()
    app.run(main)
