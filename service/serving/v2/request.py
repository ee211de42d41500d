"""Open Inference Protocol v2 requests: a JSON or binary body into checked numpy arrays."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.serving.v2.schema import (
    HEADER_LENGTH,
    NUMPY_DTYPES,
    WIRE_DTYPES,
    ModelSignature,
    TensorSpec,
    V2Error,
    deserialize_bytes,
    shape_str,
)
from service.serving.v2.text import check_text, not_text

_JSON_KINDS = {  # numpy kinds that np.array(json_list) may infer, per datatype family
    "BOOL": ("b", "booleans"),
    "INT": ("iu", "integers"),
    "FP": ("iuf", "numbers"),
}
_KIND_NAMES = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "non-integer numbers",
    "U": "strings",
    "O": "mixed values or nulls",
}


def _family(datatype: str) -> str:
    if datatype == "BOOL":
        return "BOOL"
    if datatype.startswith(("INT", "UINT")):
        return "INT"
    return "FP"


@dataclass
class InferRequest:
    """A decoded ``POST /v2/models/{name}/infer``.

    ``inputs``: name -> array in the signature's dtype (BYTES -> object array of ``bytes``).
    ``outputs_binary``: every output to return, in order -> whether to return it as binary data
    (the outputs asked for, or all of the signature's when none were named).
    ``requested_outputs``: the output names the request named ([] = none named, return all).
    ``parameters``: request-level parameters as sent (sequence_id, priority, custom, ...).
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs_binary: dict[str, bool]
    requested_outputs: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)


def _decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":
        wbits = zlib.MAX_WBITS  # HTTP "deflate" is the zlib format (what tritonclient sends)
    else:
        raise V2Error(
            f"unsupported Content-Encoding '{encoding}'; expected gzip, deflate or identity"
        )
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise V2Error(f"request body is not valid {enc} data: {e}") from None
    if len(out) > max_bytes:
        raise V2Error(
            f"request body decompresses to more than {max_bytes} bytes; "
            f"the limit is {max_bytes} bytes",
            413,
        )
    if not d.eof:
        raise V2Error(f"request body is truncated {enc} data")
    return out


def _header_length(value: int | str | None, body_len: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise V2Error(
            f"{HEADER_LENGTH} must be a non-negative integer, got {str(value)[:40]!r}"
        ) from None
    if n < 0 or n > body_len:
        raise V2Error(
            f"{HEADER_LENGTH} is {n}, expected a JSON header length between 0 and the body "
            f"length {body_len}"
        )
    return n


def _reject_constant(token: str):
    raise V2Error(
        f"request JSON holds {token}, which is not a JSON number; send finite numbers "
        "(binary tensor data carries IEEE values, but inputs must be finite too)"
    )


def _load_header(raw: bytes, header_length: int | None, content_type: str | None) -> dict:
    try:
        doc = json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        hint = ""
        if header_length is None:
            hint = (
                f"; a body that carries binary tensor data needs the {HEADER_LENGTH} header "
                "with the length of its JSON part"
            )
        what = "request body" if header_length is None else f"JSON header ({len(raw)} bytes)"
        raise V2Error(f"{what} is not valid JSON: {e}{hint}") from None
    except RecursionError:
        raise V2Error("request JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise V2Error(
            "request JSON must be an object with an 'inputs' list, "
            f"got {type(doc).__name__} ({content_type or 'no Content-Type'})"
        )
    return doc


def _check_shape(name: str, spec: TensorSpec, shape: Any) -> list[int]:
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or any(d < 0 for d in shape)
    ):
        raise V2Error(
            f"input '{name}': 'shape' must be a list of non-negative integers, expected "
            f"{shape_str(spec.shape)} (-1 = any), got {json.dumps(shape)[:80]}"
        )
    if len(shape) != len(spec.shape) or any(
        s != -1 and s != d for s, d in zip(spec.shape, shape, strict=False)
    ):
        raise V2Error(
            f"input '{name}': expected shape {shape_str(spec.shape)} (-1 = any), "
            f"got {shape_str(shape)}"
        )
    return shape


def _leaves(data: list) -> Iterator[Any]:
    """The non-list elements of a nested list, row-major, without recursion."""
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _flatten_strings(name: str, data: list, out: list[bytes]) -> None:
    for item in _leaves(data):
        if not isinstance(item, str):
            raise V2Error(
                f"input '{name}' (BYTES): JSON data must be strings, "
                f"got {type(item).__name__} {json.dumps(item)[:40]}"
            )
        try:
            out.append(item.encode("utf-8"))
        except UnicodeEncodeError as err:  # a lone surrogate (see .text)
            raise not_text(f"input '{name}' (BYTES) element {len(out)}", item, err.start) from None


def _exact_ints(data: list) -> np.ndarray | None:
    """A flat object array of Python ints when every element is an integer (numpy infers
    float64 or object for integers that fit no single int64/uint64), else None."""
    leaves = list(_leaves(data))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in leaves):
        out = np.empty(len(leaves), dtype=object)
        out[:] = leaves
        return out
    return None


def _json_tensor(name: str, spec: TensorSpec, data: Any, shape: list[int], count: int):
    dt = spec.datatype
    if not isinstance(data, list):
        raise V2Error(
            f"input '{name}': 'data' must be a (flat or nested) list of {count} values, "
            f"got {type(data).__name__}"
        )
    if dt == "BYTES":
        items: list[bytes] = []
        _flatten_strings(name, data, items)
        if len(items) != count:
            raise V2Error(
                f"input '{name}': shape {shape_str(shape)} needs {count} elements, "
                f"data has {len(items)}"
            )
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    try:
        raw = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise V2Error(
            f"input '{name}': 'data' must be a flat or regularly nested list of numbers: {e}"
        ) from None
    kinds, wanted = _JSON_KINDS[_family(dt)]
    exact = None
    if raw.size and _family(dt) == "INT" and raw.dtype.kind in "fO":
        exact = _exact_ints(data)
        raw = raw if exact is None else exact
    if raw.size and exact is None and raw.dtype.kind not in kinds:
        got = _KIND_NAMES.get(raw.dtype.kind, str(raw.dtype))
        raise V2Error(f"input '{name}' ({dt}): JSON data must be {wanted}, got {got}")
    if raw.size != count:
        raise V2Error(
            f"input '{name}': shape {shape_str(shape)} needs {count} elements, data has {raw.size}"
        )
    target = NUMPY_DTYPES[dt]
    if raw.size and _family(dt) == "INT":
        info = np.iinfo(target)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < info.min or hi > info.max:
            raise V2Error(
                f"input '{name}' ({dt}): values must lie in [{info.min}, {info.max}], "
                f"got values in [{lo}, {hi}]"
            )
    with np.errstate(over="ignore", invalid="ignore"):
        out = raw.astype(target)
    if _family(dt) == "FP":
        _check_finite(name, dt, out)
    return out.reshape(shape)


def _check_finite(name: str, datatype: str, arr: np.ndarray) -> None:
    """Floating inputs are finite and within their datatype's range (1e39 is no FP32)."""
    bad = arr.size - int(np.isfinite(arr).sum())
    if bad:
        limit = float(np.finfo(arr.dtype).max)
        raise V2Error(
            f"input '{name}' ({datatype}): values must be finite numbers within +/-{limit:.7g}; "
            f"{bad} of {arr.size} are not (NaN, infinity, or out of {datatype}'s range)"
        )


def _binary_tensor(name: str, spec: TensorSpec, buf: memoryview, shape: list[int], count: int):
    dt = spec.datatype
    if dt == "BYTES":
        return deserialize_bytes(buf, count, what=f"input '{name}'").reshape(shape)
    itemsize = NUMPY_DTYPES[dt].itemsize
    need = count * itemsize
    if len(buf) != need:
        raise V2Error(
            f"input '{name}': shape {shape_str(shape)} of {dt} takes {need} bytes "
            f"({count} x {itemsize}), binary_data_size is {len(buf)}"
        )
    if dt == "BOOL":
        arr = np.frombuffer(buf, dtype=np.uint8) != 0
    else:  # astype copies: a writable, aligned, native-endian array that owns its memory
        arr = np.frombuffer(buf, dtype=WIRE_DTYPES[dt]).astype(NUMPY_DTYPES[dt])
        if _family(dt) == "FP":
            _check_finite(name, dt, arr)
    return arr.reshape(shape)


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_infer_request(
    body: bytes,
    header_length: int | str | None,
    content_type: str | None,
    signature: ModelSignature,
    max_bytes: int,
    *,
    content_encoding: str | None = None,
) -> InferRequest:
    """Decode and validate an infer request body against ``signature``.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None when absent);
    ``content_type`` is only used in messages (tritonclient sends none with binary bodies);
    ``content_encoding`` (gzip/deflate, as ``tritonclient`` sends with
    ``request_compression_algorithm``) is undone first, and the limit applies to both sizes.
    Raises :class:`V2Error` (400, or 413 over ``max_bytes``).
    """
    if len(body) > max_bytes:
        raise V2Error(f"request body is {len(body)} bytes; the limit is {max_bytes} bytes", 413)
    if content_encoding:
        body = _decompress(bytes(body), content_encoding, max_bytes)
    hlen = _header_length(header_length, len(body))
    view = memoryview(body)
    if hlen is None:
        doc = _load_header(bytes(view), None, content_type)
        binary = view[0:0]
    else:
        doc = _load_header(bytes(view[:hlen]), hlen, content_type)
        binary = view[hlen:]

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error(f"'id' must be a string, got {type(request_id).__name__}")
    if request_id is not None:  # the answer carries it back
        check_text("'id'", request_id)
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise V2Error(f"'parameters' must be an object, got {type(parameters).__name__}")

    expected = [t.describe() for t in signature.inputs]
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        got = "nothing" if raw_inputs is None else json.dumps(raw_inputs)[:60]
        raise V2Error(
            f"request needs an 'inputs' list; model '{signature.name}' expects {expected}, "
            f"got {got}"
        )

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, entry in enumerate(raw_inputs):
        if not isinstance(entry, dict):
            raise V2Error(
                f"inputs[{i}] must be an object with name, datatype, shape and data, "
                f"got {type(entry).__name__}"
            )
        name = entry.get("name")
        if not isinstance(name, str):
            raise V2Error(f"inputs[{i}] needs a string 'name'; expected one of {expected}")
        spec = signature.input(name)
        if spec is None:
            raise V2Error(
                f"unknown input '{name}'; model '{signature.name}' expects inputs {expected}"
            )
        if name in inputs:
            raise V2Error(f"input '{name}' appears more than once")
        datatype = entry.get("datatype")
        if datatype != spec.datatype:
            raise V2Error(
                f"input '{name}': expected datatype {spec.datatype}, got "
                f"{datatype if isinstance(datatype, str) else json.dumps(datatype)}"
            )
        shape = _check_shape(name, spec, entry.get("shape"))
        count = math.prod(shape)
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise V2Error(f"input '{name}': 'parameters' must be an object")
        if "shared_memory_region" in params:
            raise V2Error(
                f"input '{name}': shared memory is not supported; send 'data' or "
                "parameters.binary_data_size with binary tensor data"
            )
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in entry:
                raise V2Error(
                    f"input '{name}' has both 'data' and parameters.binary_data_size; "
                    "expected one of them"
                )
            if not _non_negative_int(size):
                raise V2Error(
                    f"input '{name}': binary_data_size must be a non-negative integer, "
                    f"got {json.dumps(size)}"
                )
            if hlen is None:
                raise V2Error(
                    f"input '{name}' has parameters.binary_data_size but the request has no "
                    f"{HEADER_LENGTH} header; expected that header with the JSON length"
                )
            if offset + size > len(binary):
                raise V2Error(
                    f"input '{name}': binary_data_size {size} at binary offset {offset} runs "
                    f"past the end of the body: only {len(binary) - offset} bytes remain "
                    f"({len(binary)} binary bytes after the {hlen}-byte JSON header); "
                    "the body is truncated"
                )
            inputs[name] = _binary_tensor(name, spec, binary[offset : offset + size], shape, count)
            offset += size
        elif "data" in entry:
            inputs[name] = _json_tensor(name, spec, entry["data"], shape, count)
        else:
            raise V2Error(
                f"input '{name}' has neither 'data' nor parameters.binary_data_size; "
                "expected one of them"
            )

    missing = [t.name for t in signature.inputs if not t.optional and t.name not in inputs]
    if missing:
        raise V2Error(
            f"missing input(s) {missing}; model '{signature.name}' expects inputs {expected}"
        )
    if offset != len(binary):
        raise V2Error(
            f"{len(binary) - offset} bytes left over after the last binary tensor: the "
            f"inputs' binary_data_size values add up to {offset} of the {len(binary)} bytes "
            f"after the {hlen}-byte JSON header"
        )

    default_binary = parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise V2Error(
            f"parameters.binary_data_output must be true or false, got {json.dumps(default_binary)}"
        )
    raw_outputs = doc.get("outputs")
    outputs_binary: dict[str, bool] = {}
    requested: list[str] = []
    if raw_outputs is None:
        outputs_binary = {name: default_binary for name in signature.output_names}
    else:
        if not isinstance(raw_outputs, list):
            raise V2Error(f"'outputs' must be a list, got {type(raw_outputs).__name__}")
        for i, entry in enumerate(raw_outputs):
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                raise V2Error(
                    f"outputs[{i}] must be an object with a string 'name'; expected one of "
                    f"{signature.output_names}"
                )
            if signature.output(name) is None:
                raise V2Error(
                    f"unknown output '{name}'; model '{signature.name}' has outputs "
                    f"{signature.output_names}"
                )
            if name in outputs_binary:
                raise V2Error(f"output '{name}' is requested more than once")
            oparams = entry.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise V2Error(f"output '{name}': 'parameters' must be an object")
            if oparams.get("classification"):
                raise V2Error(
                    f"output '{name}': classification is not supported; request the raw tensor"
                )
            if "shared_memory_region" in oparams:
                raise V2Error(
                    f"output '{name}': shared memory is not supported; use binary_data instead"
                )
            flag = oparams.get("binary_data", default_binary)
            if not isinstance(flag, bool):
                raise V2Error(
                    f"output '{name}': binary_data must be true or false, got {json.dumps(flag)}"
                )
            outputs_binary[name] = flag
            requested.append(name)
        if not outputs_binary:  # "outputs": [] means the same as no outputs named
            outputs_binary = {name: default_binary for name in signature.output_names}

    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs_binary=outputs_binary,
        requested_outputs=requested,
        parameters=parameters,
    )
