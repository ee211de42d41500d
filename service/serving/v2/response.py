"""Open Inference Protocol v2 responses: model outputs into a JSON or binary body."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from service.serving.v2.schema import (
    HEADER_LENGTH,
    NUMPY_DTYPES,
    WIRE_DTYPES,
    ModelSignature,
    V2Error,
    serialize_bytes,
)


def as_datatype(name: str, arr: Any, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.asarray(arr, dtype=object)
    arr = np.asarray(arr)
    target = NUMPY_DTYPES[datatype]
    return arr if arr.dtype == target else arr.astype(target)


def _json_bytes(name: str, arr: np.ndarray) -> list[str]:
    out = []
    for item in arr.ravel(order="C").tolist():
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise V2Error(
                    f"output '{name}' holds bytes that are not UTF-8 text; request it with "
                    "binary_data=true"
                ) from None
        out.append(item if isinstance(item, str) else str(item))
    return out


def wire_bytes(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes(arr)
    if datatype == "BOOL":
        return arr.astype(np.uint8).tobytes(order="C")
    return arr.astype(WIRE_DTYPES[datatype], copy=False).tobytes(order="C")


def encode_infer_response(
    model_name: str,
    model_version: str | int,
    request_id: str | None,
    outputs: dict[str, Any],
    signature: ModelSignature,
    binary: dict[str, bool] | None,
) -> tuple[bytes, dict[str, str]]:
    """Encode the response body and its headers.

    The outputs sent are ``binary``'s keys, in order (``InferRequest.outputs_binary``), or all
    of the signature's outputs as JSON when it is empty. Arrays are cast to the signature's
    datatype. When any output is binary, the body is the JSON header followed by the binary
    blobs and the headers carry ``Inference-Header-Content-Length`` (which ``tritonclient``
    needs; it ignores Content-Type) and ``Content-Type: application/octet-stream``; otherwise
    the body is JSON with ``Content-Type: application/json``.

    A missing or undeclared output is a server bug (ValueError); an output requested as JSON
    that holds non-UTF-8 bytes, NaN or infinity is a V2Error (400): JSON carries neither.
    """
    names = list(binary) if binary else signature.output_names
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in names:
        spec = signature.output(name)
        if spec is None:
            raise ValueError(f"output '{name}' is not in model '{signature.name}'s signature")
        if name not in outputs:
            raise ValueError(f"the model returned no output '{name}'; it returned {list(outputs)}")
        arr = as_datatype(name, outputs[name], spec.datatype)
        entry: dict[str, Any] = {
            "name": name,
            "datatype": spec.datatype,
            "shape": [int(d) for d in arr.shape],
        }
        if binary and binary.get(name):
            raw = wire_bytes(arr, spec.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif spec.datatype == "BYTES":
            entry["data"] = _json_bytes(name, arr)
        else:
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                # JSON has no NaN or infinity (strict parsers reject the bare tokens).
                raise V2Error(
                    f"output '{name}' holds NaN or infinity for this input, which JSON cannot "
                    "carry; request it with binary_data=true, or send inputs in the model's "
                    "range"
                )
            entry["data"] = arr.ravel(order="C").tolist()
        entries.append(entry)

    response: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = entries
    header = json.dumps(response, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if blobs:
        headers = {
            "Content-Type": "application/octet-stream",
            HEADER_LENGTH: str(len(header)),
        }
        return b"".join([header, *blobs]), headers
    return header, {"Content-Type": "application/json"}
