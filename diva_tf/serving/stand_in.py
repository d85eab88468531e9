"""A LOCAL STAND-IN for TensorFlow Serving's REST API, for tests and demos. It is NOT TF Serving.

`python -m diva_tf.serve --model_base_path export/models/diva --model_name diva [--port 8501]
[--host 127.0.0.1] [--max_request_bytes N] [--max_image_pixels N] [--request_timeout_seconds S]`

It answers the REST calls of TF Serving (`docs/api_rest.md` of tensorflow/serving) from a model
base path in TF Serving layout, with TF Serving's JSON shapes, error messages and status codes:
- `GET  /v1/models/<name>[/versions/<v>]`            model status
- `GET  /v1/models/<name>[/versions/<v>]/metadata`   signature defs
- `POST /v1/models/<name>[/versions/<v>]:predict`    `{"signature_name", "instances"|"inputs"}`
Like TF Serving's default version policy it serves the highest version that loads, keeps serving
what it could load when a newer version is broken, and picks up newly published versions (polling
the base path). Like TF Serving, every error is a 4xx/5xx reply of `{"error": message}`, HEAD and
unknown methods included. Its own guards (not TF Serving's): a listen queue for bursts of
connections, chunked request bodies decoded under the same `--max_request_bytes`, a per-read
`--request_timeout_seconds`, and `--max_image_pixels` checked from image headers before decoding.
Use the real `tensorflow_model_server` (see export/README.md) for anything beyond a laptop: this
server has no batching, no gRPC, no auth, no monitoring, and binds to loopback by default.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import struct
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from diva_tf.core.errors import DivaError
from diva_tf.serving.export import IDENTITY_FILES, list_versions

BANNER = ("LOCAL STAND-IN for TensorFlow Serving's REST API (tests/demos only); "
          "this is NOT TensorFlow Serving")
DEFAULT_SIGNATURE = "serving_default"
PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)",
                          re.I)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?(?:/(metadata))?", re.I)
DIGITS = re.compile(r"[0-9]+")
HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
TOO_DEEP = "JSON Parse error: the document is nested too deeply"

# TF error code -> HTTP status, as TF Serving's http_server.cc maps them.
_HTTP_OF_TF_CODE = {
    tf.errors.CANCELLED: 499, tf.errors.UNKNOWN: 500, tf.errors.INVALID_ARGUMENT: 400,
    tf.errors.DEADLINE_EXCEEDED: 504, tf.errors.NOT_FOUND: 404, tf.errors.ALREADY_EXISTS: 409,
    tf.errors.PERMISSION_DENIED: 403, tf.errors.RESOURCE_EXHAUSTED: 429,
    tf.errors.FAILED_PRECONDITION: 400, tf.errors.ABORTED: 409, tf.errors.OUT_OF_RANGE: 400,
    tf.errors.UNIMPLEMENTED: 501, tf.errors.INTERNAL: 500, tf.errors.UNAVAILABLE: 503,
    tf.errors.DATA_LOSS: 500, tf.errors.UNAUTHENTICATED: 401,
}


class RestError(DivaError):
    """An error reply: HTTP status + TF Serving's `{"error": message}` body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = int(status), message


def bad_request(message: str) -> RestError:
    return RestError(HTTPStatus.BAD_REQUEST, message)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may cost: the stand-in's own guards (0 = no limit), not TF Serving's."""

    max_request_bytes: int = 64 << 20
    max_image_pixels: int = 40_000_000  # decoded pixels of one image, checked from its header
    request_timeout: float = 30.0  # seconds a connection may stay silent mid-request or idle


# ---- routing --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Route:
    kind: str  # "status" | "metadata" | "predict" | "classify" | "regress"
    model: str
    version: int | None


def parse_route(method: str, path: str) -> Route:
    """Match TF Serving's REST URL patterns (HEAD as GET); anything else is a malformed request
    (400)."""
    path = path.split("?", 1)[0]
    if method == "POST" and (m := PREDICT_PATH.fullmatch(path)):
        return Route(m.group(3).lower(), m.group(1), _version(m.group(2)))
    if method in ("GET", "HEAD") and (m := STATUS_PATH.fullmatch(path)):
        if not m.group(1):
            raise bad_request("Missing model name in request.")
        return Route("metadata" if m.group(3) else "status", m.group(1), _version(m.group(2)))
    raise bad_request(f"Malformed request: {method} {path}")


def _version(text: str | None) -> int | None:
    """A URL's version as TF Serving reads it: an int64."""
    if text is None:
        return None
    if len(text) > 19 or int(text) >= 1 << 63:
        raise bad_request(f"Failed to convert version: {text[:40]}")
    return int(text)


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
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise bad_request(f"JSON Parse error: {e}") from None
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


# ---- image headers --------------------------------------------------------------------------
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-15 minus DHT, JPG, DAC


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG segments to the first start-of-frame (skipping APPn, so EXIF thumbnails)."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            i += 2
        else:
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def _bmp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means top-down rows


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if data[8:12] != b"WEBP":
        return None
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit (size - 1) fields after the 0x2F signature
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit (canvas size - 1)
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    return None


_HEADER_PARSERS = (  # (magic, parser) of the formats tf.io.decode_image reads
    (b"\x89PNG\r\n\x1a\n", lambda d: struct.unpack(">II", d[16:24])),  # IHDR width, height
    (b"\xff\xd8", _jpeg_size),
    (b"GIF8", lambda d: struct.unpack("<HH", d[6:10])),  # logical screen = decoded frame size
    (b"BM", _bmp_size),
    (b"RIFF", _webp_size),
)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header without decoding it; None when the bytes
    are no image header this knows (the model's decoder then has the last word)."""
    for magic, parse in _HEADER_PARSERS:
        if data.startswith(magic):
            try:
                return parse(data)
            except struct.error:  # truncated header
                return None
    return None


def check_image_pixels(inputs: dict[str, np.ndarray], limit: int) -> None:
    """Refuse any image of a `*_bytes` string input over `limit` decoded pixels (0 = no limit),
    before the graph decodes it: a 200 KB PNG can decode to gigabytes."""
    if not limit:
        return
    for name, array in inputs.items():
        if not name.endswith("_bytes") or array.dtype != object:
            continue
        for i, value in enumerate(array.flat):
            size = image_size(value) if isinstance(value, bytes) else None
            if size and size[0] * size[1] > limit:
                raise bad_request(f"Input {name!r} value {i}: image of {size[0]}x{size[1]} = "
                                  f"{size[0] * size[1]} pixels exceeds --max_image_pixels={limit}")


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

    def predict(self, doc: dict, max_image_pixels: int = 0) -> dict:
        name = doc.get("signature_name", "")
        if not isinstance(name, str):
            raise bad_request("'signature_name' key must be a string value.")
        fn = self.signature(name)
        specs = fn.structured_input_signature[1]
        inputs, fmt = request_inputs(doc, specs)
        check_image_pixels(inputs, max_image_pixels)
        try:
            outputs = fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
        except tf.errors.OpError as e:
            raise RestError(_HTTP_OF_TF_CODE.get(e.error_code, 500), e.message) from None
        except (TypeError, ValueError) as e:
            raise bad_request(str(e)) from None
        return response_body({k: v.numpy() for k, v in outputs.items()}, fmt)


@dataclasses.dataclass(frozen=True)
class LoadFailure:
    """A version that did not load, and the state of its files then: retried when they change."""

    stamp: tuple
    message: str


def files_stamp(version_dir: str) -> tuple:
    """(inode, mtime, size) of the files a load reads first; a re-export changes it."""
    stamp = []
    for name in IDENTITY_FILES:
        try:
            st = os.stat(os.path.join(version_dir, name))
            stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


class ModelStore:
    """The versions of one model loaded from its base path, per TF Serving's version policy: the
    highest version that loads ("latest") or every version that loads ("all")."""

    def __init__(self, name: str, base_path: str, policy: str = "latest"):
        self.name, self.base_path, self.policy = name, base_path, policy
        self._servables: dict[int, Servable] = {}
        self._failures: dict[int, LoadFailure] = {}
        self._lock = threading.Lock()

    def refresh(self) -> list[int]:
        """Load newly published versions, drop those the policy no longer serves. A version that
        fails to load is logged once, skipped (an older one is served instead, as TF Serving
        keeps what it could load) and retried only when its files change."""
        on_disk = list_versions(self.base_path)
        failures = {v: f for v, f in self._failures.items() if v in on_disk}
        servables = {}
        for v in reversed(on_disk):
            servable = self._servables.get(v) or self._load(v, failures)
            if servable:
                servables[v] = servable
                if self.policy == "latest":
                    break
        with self._lock:
            self._servables, self._failures = servables, failures
            return sorted(servables)

    def _load(self, version: int, failures: dict[int, LoadFailure]) -> Servable | None:
        path = os.path.join(self.base_path, str(version))
        stamp = files_stamp(path)
        if version in failures and failures[version].stamp == stamp:
            return None
        try:
            servable = Servable(version, path, tf.saved_model.load(path))
        except Exception as e:  # noqa: BLE001 - a broken version must not take the model down
            failures[version] = LoadFailure(stamp, f"{type(e).__name__}: {e}")
            logging.error("could not load %s version %d from %s (retried when its files "
                          "change): %s", self.name, version, path, failures[version].message)
            return None
        failures.pop(version, None)
        logging.info("loaded %s version %d from %s", self.name, version, path)
        return servable

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
        """Served versions AVAILABLE; versions that failed to load END with their error, as TF
        Serving reports a failed load."""
        self._check_name(name)
        with self._lock:
            states = {v: ("AVAILABLE", "OK", "") for v in self._servables}
            states.update({v: ("END", "UNKNOWN", f.message) for v, f in self._failures.items()})
        if version is not None:
            if version not in states:
                raise RestError(HTTPStatus.NOT_FOUND,
                                f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        if not states:
            raise RestError(HTTPStatus.NOT_FOUND, f"Could not find any versions of model {name}")
        return {"model_version_status": [
            {"version": str(v), "state": state,
             "status": {"error_code": code, "error_message": message}}
            for v, (state, code, message) in sorted(states.items(), reverse=True)]}

    def metadata(self, name: str, version: int | None) -> dict:
        servable = self.servable(name, version)
        spec = {"name": name, "signature_name": "", "version": str(servable.version)}
        return {"model_spec": spec,
                "metadata": {"signature_def": {"signature_def": servable.signature_defs}}}

    def handle(self, route: Route, body: bytes, max_image_pixels: int = 0) -> dict:
        if route.kind == "status":
            return self.status(route.model, route.version)
        if route.kind == "metadata":
            return self.metadata(route.model, route.version)
        if route.kind != "predict":
            raise RestError(HTTPStatus.NOT_IMPLEMENTED,
                            f"The stand-in server does not implement :{route.kind}")
        servable = self.servable(route.model, route.version)
        return servable.predict(parse_json_body(body), max_image_pixels)


# ---- HTTP -----------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    """One connection. Every reply, errors included, is JSON; a body is read in full (or the
    connection closed) before the reply, so body bytes are never parsed as a next request."""

    server: "StandInServer"
    protocol_version = "HTTP/1.1"

    def setup(self):
        self.timeout = self.server.limits.request_timeout or None
        super().setup()

    def do_GET(self):
        self._serve()

    def do_POST(self):
        self._serve()

    def do_HEAD(self):
        self._serve()

    def __getattr__(self, name: str):
        """Any other method (PUT, DELETE, BREW, ...) is a malformed request, as in TF Serving."""
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self):
        try:
            body = self._body()
            status, reply = HTTPStatus.OK, self.server.store.handle(
                parse_route(self.command, self.path), body, self.server.limits.max_image_pixels)
        except RestError as e:
            status, reply = e.status, {"error": e.message}
        except TimeoutError:
            self.close_connection = True
            status, reply = HTTPStatus.REQUEST_TIMEOUT, {"error": self._timeout_message("body")}
        except RecursionError:  # JSON nested too deeply, in parsing or in walking it
            status, reply = HTTPStatus.BAD_REQUEST, {"error": TOO_DEEP}
        except Exception as e:  # noqa: BLE001 - a request must never kill the server
            status, reply = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"}
        self._reply(status, reply)

    def _refuse(self, status: int, message: str) -> RestError:
        """An error after which the rest of the connection cannot be trusted: reply, then close."""
        self.close_connection = True
        return RestError(status, message)

    def _timeout_message(self, what: str) -> str:
        return (f"Request {what} not received: no data for --request_timeout_seconds="
                f"{self.server.limits.request_timeout:g}")

    def _body(self) -> bytes:
        coding = self.headers.get("Transfer-Encoding")
        if coding is not None:
            if coding.strip().lower() != "chunked":
                raise self._refuse(HTTPStatus.NOT_IMPLEMENTED,
                                   f"Transfer-Encoding {coding!r} is not supported (only chunked)")
            if "Content-Length" in self.headers:  # RFC 9112 6.3: chunked wins, then close
                self.close_connection = True
            return self._chunked_body()
        values = self.headers.get_all("Content-Length") or ["0"]
        text = values[0].strip()
        if len(set(values)) > 1 or not DIGITS.fullmatch(text):
            raise self._refuse(HTTPStatus.BAD_REQUEST,
                               f"Invalid Content-Length header: {', '.join(values)!r}")
        length, limit = int(text), self.server.limits.max_request_bytes
        if limit and length > limit:
            self._discard(length)
            raise self._too_large(f"Request body of {length} bytes")
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            raise self._refuse(HTTPStatus.BAD_REQUEST,
                               f"Request body ended after {len(body)} of {length} bytes")
        return body

    def _too_large(self, what: str) -> RestError:
        limit = self.server.limits.max_request_bytes
        return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"{what} exceeds the limit of {limit} bytes (--max_request_bytes)")

    def _chunked_body(self) -> bytes:
        """A `Transfer-Encoding: chunked` body (RFC 9112 7.1) under --max_request_bytes."""
        parts, size, limit = [], 0, self.server.limits.max_request_bytes
        while True:
            line = self.rfile.readline(1 << 12)
            digits = line.split(b";", 1)[0].strip()  # chunk extensions are ignored
            if not HEX.fullmatch(digits):
                raise self._refuse(HTTPStatus.BAD_REQUEST,
                                   f"Malformed chunked body: chunk size line {line[:40]!r}")
            n = int(digits, 16)
            if not n:
                break
            size += n
            if limit and size > limit:
                raise self._too_large(f"Chunked request body of at least {size} bytes")
            data = self.rfile.read(n)
            if len(data) < n or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise self._refuse(HTTPStatus.BAD_REQUEST,
                                   "Malformed chunked body: a chunk is shorter than its size")
            parts.append(data)
        for _ in range(100):  # trailer fields, up to the empty line
            if self.rfile.readline(1 << 16) in (b"\r\n", b"\n", b""):
                return b"".join(parts)
        raise self._refuse(HTTPStatus.BAD_REQUEST, "Malformed chunked body: over 100 trailers")

    def _discard(self, length: int, chunk: int = 1 << 20) -> None:
        """Drain a refused body (so the client reads our reply instead of a reset connection),
        unless it is absurdly large; then just close."""
        self.close_connection = True
        if length > 16 * self.server.limits.max_request_bytes:
            return
        while length > 0:
            got = len(self.rfile.read(min(chunk, length)))
            if not got:
                return
            length -= got

    def parse_request(self) -> bool:
        """The request line and headers; a client that stalls in its headers gets 408."""
        try:
            return super().parse_request()
        except TimeoutError:
            self.close_connection = True
            self._reply(HTTPStatus.REQUEST_TIMEOUT, {"error": self._timeout_message("headers")})
            return False

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, header too long, ...) as JSON too, with a
        status line even when the request line was too broken to name an HTTP version."""
        self.close_connection = True
        self.request_version = self.protocol_version
        self._reply(code, {"error": message or HTTPStatus(code).phrase})

    def _reply(self, status: int, reply: dict) -> None:
        data = json.dumps(reply, indent=1).encode()
        self.send_response(int(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, fmt, *args):
        logging.debug("%s %s", self.address_string(), fmt % args)


class StandInServer(ThreadingHTTPServer):
    """ThreadingHTTPServer bound to one ModelStore: a thread per connection."""

    daemon_threads = True
    request_queue_size = 1024  # listen backlog: socketserver's 5 reset bursts of connections

    def __init__(self, store: ModelStore, host: str = "127.0.0.1", port: int = 8501,
                 limits: Limits = Limits()):
        self.store, self.limits = store, limits
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def handle_error(self, request, client_address):
        """A client that hung up or went silent mid-reply is routine: a log line, no traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            logging.debug("connection from %s: %s", client_address, error)
        else:
            logging.exception("connection from %s", client_address)


def make_server(model_base_path: str, model_name: str, host: str = "127.0.0.1", port: int = 8501,
                policy: str = "latest", **limits) -> StandInServer:
    """Load the model and bind (port 0 = ephemeral); call serve_forever() to answer requests.
    `limits`: the fields of `Limits`."""
    store = ModelStore(model_name, model_base_path, policy)
    if not store.refresh():
        raise FileNotFoundError(f"no loadable <version>/saved_model.pb under {model_base_path}")
    return StandInServer(store, host, port, Limits(**limits))


def poll(store: ModelStore, seconds: float, stop: threading.Event) -> None:
    while not stop.wait(seconds):
        store.refresh()
