"""Open Inference Protocol v2 requests: a JSON or binary body into checked numpy arrays.

The body's framing lives beside this module: :mod:`.encoding` undoes ``Content-Encoding``,
:mod:`.binary` splits the JSON header from the binary tensor data and decodes that data,
:mod:`.json_data` loads the JSON and decodes ``data`` lists. Here: the request's fields, each
input checked against the model's signature, and the outputs asked for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.serving.v2.binary import BinaryData, binary_tensor, split_body
from service.serving.v2.encoding import decompress
from service.serving.v2.json_data import json_tensor, load_header
from service.serving.v2.schema import ModelSignature, TensorSpec, V2Error, shape_str
from service.serving.v2.text import check_text


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
        body = decompress(bytes(body), content_encoding, max_bytes)
    header, binary = split_body(body, header_length)
    doc = load_header(header, binary.header_length, content_type)

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error(f"'id' must be a string, got {type(request_id).__name__}")
    if request_id is not None:  # the answer carries it back
        check_text("'id'", request_id)
    parameters = {} if doc.get("parameters") is None else doc["parameters"]  # [] or 0: a 400
    if not isinstance(parameters, dict):
        raise V2Error(f"'parameters' must be an object, got {type(parameters).__name__}")

    inputs = _inputs(doc.get("inputs"), signature, binary)
    outputs_binary, requested = _outputs(doc.get("outputs"), parameters, signature)
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs_binary=outputs_binary,
        requested_outputs=requested,
        parameters=parameters,
    )


# ---- inputs ------------------------------------------------------------------------------------


def _inputs(raw_inputs: Any, signature: ModelSignature, binary: BinaryData) -> dict:
    """Every input as an array; each named once, none missing, all binary data used."""
    expected = [t.describe() for t in signature.inputs]
    if not isinstance(raw_inputs, list) or not raw_inputs:
        got = "nothing" if raw_inputs is None else json.dumps(raw_inputs)[:60]
        raise V2Error(
            f"request needs an 'inputs' list; model '{signature.name}' expects {expected}, "
            f"got {got}"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, entry in enumerate(raw_inputs):
        name, spec = _input_spec(i, entry, signature, expected, inputs)
        inputs[name] = _input_tensor(name, spec, entry, binary)
    missing = [t.name for t in signature.inputs if not t.optional and t.name not in inputs]
    if missing:
        raise V2Error(
            f"missing input(s) {missing}; model '{signature.name}' expects inputs {expected}"
        )
    binary.check_used()
    return inputs


def _input_spec(
    i: int, entry: Any, signature: ModelSignature, expected: list[str], seen: dict
) -> tuple[str, TensorSpec]:
    """``inputs[i]``'s name (not in ``seen`` yet) and the signature's spec of it, its datatype
    checked."""
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
        raise V2Error(f"unknown input '{name}'; model '{signature.name}' expects inputs {expected}")
    if name in seen:
        raise V2Error(f"input '{name}' appears more than once")
    datatype = entry.get("datatype")
    if datatype != spec.datatype:
        raise V2Error(
            f"input '{name}': expected datatype {spec.datatype}, got "
            f"{datatype if isinstance(datatype, str) else json.dumps(datatype)}"
        )
    return name, spec


def _input_tensor(name: str, spec: TensorSpec, entry: dict, binary: BinaryData) -> np.ndarray:
    """The input's array, from its JSON ``data`` or its share of the binary data."""
    shape = _check_shape(name, spec, entry.get("shape"))
    count = math.prod(shape)
    params = {} if entry.get("parameters") is None else entry["parameters"]
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
        return binary_tensor(name, spec, binary.take(name, size), shape, count)
    if "data" in entry:
        return json_tensor(name, spec, entry["data"], shape, count)
    raise V2Error(
        f"input '{name}' has neither 'data' nor parameters.binary_data_size; expected one of them"
    )


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


# ---- outputs -----------------------------------------------------------------------------------


def _outputs(
    raw_outputs: Any, parameters: dict, signature: ModelSignature
) -> tuple[dict[str, bool], list[str]]:
    """Every output to return -> whether as binary data, and the names the request asked for."""
    default_binary = parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise V2Error(
            f"parameters.binary_data_output must be true or false, got {json.dumps(default_binary)}"
        )
    every = {name: default_binary for name in signature.output_names}
    if raw_outputs is None:
        return every, []
    if not isinstance(raw_outputs, list):
        raise V2Error(f"'outputs' must be a list, got {type(raw_outputs).__name__}")
    outputs_binary: dict[str, bool] = {}
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
        outputs_binary[name] = _output_binary(name, entry, default_binary)
    if not outputs_binary:  # "outputs": [] means the same as no outputs named
        return every, []
    return outputs_binary, list(outputs_binary)


def _output_binary(name: str, entry: dict, default: bool) -> bool:
    """Whether output ``name`` goes back as binary data; what is not supported is refused."""
    oparams = {} if entry.get("parameters") is None else entry["parameters"]
    if not isinstance(oparams, dict):
        raise V2Error(f"output '{name}': 'parameters' must be an object")
    if oparams.get("classification"):
        raise V2Error(f"output '{name}': classification is not supported; request the raw tensor")
    if "shared_memory_region" in oparams:
        raise V2Error(f"output '{name}': shared memory is not supported; use binary_data instead")
    flag = oparams.get("binary_data", default)
    if not isinstance(flag, bool):
        raise V2Error(f"output '{name}': binary_data must be true or false, got {json.dumps(flag)}")
    return flag
