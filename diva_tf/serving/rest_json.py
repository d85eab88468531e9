"""TF Serving's REST predict body <-> tensors, as TF Serving reads and writes it (its
`g3doc/api_rest.md`): `{"signature_name"?, "instances": [...]}` (row: per-example values, or
objects keyed by input name) -> `{"predictions": [...]}`; `{"inputs": ...}` (columnar) ->
`{"outputs": ...}`; binary values travel as `{"b64": "..."}`. Every malformed body raises
`BadRequest` (HTTP 400) with TF Serving's message. Signature specs come in as `tf.TensorSpec`s;
TensorFlow itself is not imported here (KServe worker processes import this before they load the
model)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING

import numpy as np

from diva_tf.serving.errors import BadRequest

if TYPE_CHECKING:
    import tensorflow as tf


def bad_request(message: str) -> BadRequest:
    return BadRequest(message)


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
    if dtype.name == "bool" or isinstance(value, bool):
        return dtype.name == "bool" and isinstance(value, bool)
    if dtype.is_integer:
        return isinstance(value, int)
    return dtype.is_floating and isinstance(value, (int, float))


def _leaves(value, dtype: tf.DType):
    """A JSON value (nested lists) -> the same nesting with values of `dtype`."""
    if isinstance(value, list):
        return [_leaves(v, dtype) for v in value]
    if dtype.name == "string":
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
    if dtype.name in ("string", "bool"):
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
        numpy_dtype = object if spec.dtype.name == "string" else spec.dtype.as_numpy_dtype
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
