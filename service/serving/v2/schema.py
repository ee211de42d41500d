"""Open Inference Protocol v2: datatypes, errors, model signatures and the BYTES wire format."""

from __future__ import annotations

import struct
from importlib import metadata as _metadata
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from service.serving.errors import ServiceError

HEADER_LENGTH = "Inference-Header-Content-Length"

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
#: The v2 datatypes this codec speaks (BF16 is left out: numpy has no native bfloat16).
DATATYPES: tuple[str, ...] = tuple(NUMPY_DTYPES)
# Little-endian wire dtypes of the fixed-size types.
WIRE_DTYPES = {
    k: v.newbyteorder("<") for k, v in NUMPY_DTYPES.items() if k not in ("BYTES", "BOOL")
}
_LEN = struct.Struct("<I")


def shape_str(shape: Any) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class V2Error(ServiceError):
    """A client error: ``status`` is the HTTP status, ``message`` says expected vs. received."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message, status)

    def __repr__(self) -> str:
        return f"V2Error({self.status}, {self.message!r})"


def error_body(err: BaseException) -> dict[str, str]:
    """The v2 error body, ``{"error": message}`` (what tritonclient shows as the message)."""
    return {"error": err.message if isinstance(err, V2Error) else str(err)}


def model_not_found(name: str, known: list[str] | tuple[str, ...] = ()) -> V2Error:
    """The 404 for an unknown model name; ``known`` are the served model names."""
    return V2Error(f"unknown model '{name}'; served models: {sorted(known)}", 404)


def check_version(signature: ModelSignature, version: str | None) -> None:
    """404 unless ``version`` (from ``/v2/models/{m}/versions/{v}/...``; None/"" = any) exists."""
    if version in (None, "") or str(version) in signature.versions:
        return
    raise V2Error(
        f"model '{signature.name}' has no version '{version}'; versions: {signature.versions}",
        404,
    )


# --------------------------------------------------------------------------------------------
# Signatures and metadata
# --------------------------------------------------------------------------------------------


class TensorSpec(BaseModel):
    """One input or output tensor: v2 datatype and shape (-1 = any size in that dimension)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    datatype: str
    shape: list[int]
    optional: bool = False  # inputs only: a request may leave it out

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, v: str) -> str:
        if v not in NUMPY_DTYPES:
            raise ValueError(f"datatype must be one of {list(DATATYPES)}, got {v!r}")
        return v

    @field_validator("shape")
    @classmethod
    def _valid_shape(cls, v: list[int]) -> list[int]:
        if any(d < -1 for d in v):
            raise ValueError(f"shape dimensions must be >= 0 or -1 (any), got {v}")
        return v

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def describe(self) -> str:
        return f"{self.name} ({self.datatype} {shape_str(self.shape)})"


class ModelSignature(BaseModel):
    """What a model takes and returns; ``metadata()`` is the body of ``GET /v2/models/{name}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    platform: str = "pytorch"
    versions: list[str] = Field(default_factory=lambda: ["1"])
    # Extra model metadata, e.g. {"labels": [...]} for a classifier's class names.
    parameters: dict[str, Any] | None = None

    _inputs_by_name: dict[str, TensorSpec] = PrivateAttr(default_factory=dict)
    _outputs_by_name: dict[str, TensorSpec] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique_names(self) -> ModelSignature:
        for kind in ("inputs", "outputs"):
            names = [t.name for t in getattr(self, kind)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind[:-1]} names: {dupes}")
        return self

    def model_post_init(self, __context: Any) -> None:
        self._inputs_by_name = {t.name: t for t in self.inputs}
        self._outputs_by_name = {t.name: t for t in self.outputs}

    def input(self, name: str) -> TensorSpec | None:
        return self._inputs_by_name.get(name)

    def output(self, name: str) -> TensorSpec | None:
        return self._outputs_by_name.get(name)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
            **({"parameters": dict(self.parameters)} if self.parameters else {}),
        }


def server_metadata() -> dict[str, Any]:
    """The body of ``GET /v2``."""
    try:
        version = _metadata.version("slimserve")
    except _metadata.PackageNotFoundError:
        version = "0"
    return {"name": "slimserve", "version": version, "extensions": ["binary_tensor_data"]}


# --------------------------------------------------------------------------------------------
# BYTES element framing
# --------------------------------------------------------------------------------------------


def serialize_bytes(arr: np.ndarray) -> bytes:
    """Row-major BYTES elements (bytes, or str as UTF-8), each as 4-byte LE length + bytes."""
    parts: list[bytes] = []
    for item in np.asarray(arr, dtype=object).ravel(order="C").tolist():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(buf: bytes | memoryview, count: int | None = None, what: str = "BYTES"):
    """Inverse of :func:`serialize_bytes`: a 1-D object array of ``bytes``.

    With ``count``, the buffer must hold exactly that many elements. Malformed framing raises
    :class:`V2Error` (400) naming ``what``.
    """
    view = memoryview(buf).cast("B")
    total = len(view)
    items: list[bytes] = []
    offset = 0
    while offset < total:
        if count is not None and len(items) == count:
            raise V2Error(
                f"{what}: expected {count} BYTES elements, but {total - offset} bytes remain "
                f"after element {count}"
            )
        if total - offset < 4:
            raise V2Error(
                f"{what}: BYTES element {len(items)} needs a 4-byte length prefix, "
                f"only {total - offset} bytes remain"
            )
        (n,) = _LEN.unpack_from(view, offset)
        offset += 4
        if n > total - offset:
            raise V2Error(
                f"{what}: BYTES element {len(items)} declares {n} bytes, "
                f"only {total - offset} bytes remain"
            )
        items.append(bytes(view[offset : offset + n]))
        offset += n
    if count is not None and len(items) != count:
        raise V2Error(f"{what}: expected {count} BYTES elements, got {len(items)}")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
