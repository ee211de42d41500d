"""The binary tensor data extension: ``Inference-Header-Content-Length`` splits a body into its
JSON header and the raw bytes of the inputs that carry ``parameters.binary_data_size``.

The raw bytes follow the header in the order of those inputs, with nothing between or after
them. Numbers are little-endian and row-major; a BYTES element is a 4-byte little-endian length
and its bytes (:func:`~service.serving.v2.schema.deserialize_bytes`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from service.serving.v2.schema import (
    HEADER_LENGTH,
    NUMPY_DTYPES,
    WIRE_DTYPES,
    TensorSpec,
    V2Error,
    deserialize_bytes,
    shape_str,
)
from service.serving.v2.values import check_finite, family


def header_length(value: int | str | None, body_len: int) -> int | None:
    """The JSON header's length from the header's ``value`` (None: the body is all JSON)."""
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


class BinaryData:
    """The bytes after the JSON header, handed to the inputs in order; all must be used."""

    def __init__(self, view: memoryview, header_length: int | None) -> None:
        self.view = view
        self.header_length = header_length  # None: no header, so no binary data either
        self.offset = 0

    def take(self, name: str, size: Any) -> memoryview:
        """The next ``size`` bytes, for input ``name`` (its ``binary_data_size``)."""
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
            raise V2Error(
                f"input '{name}': binary_data_size must be a non-negative integer, "
                f"got {json.dumps(size)}"
            )
        if self.header_length is None:
            raise V2Error(
                f"input '{name}' has parameters.binary_data_size but the request has no "
                f"{HEADER_LENGTH} header; expected that header with the JSON length"
            )
        total, start = len(self.view), self.offset
        if start + size > total:
            raise V2Error(
                f"input '{name}': binary_data_size {size} at binary offset {start} runs "
                f"past the end of the body: only {total - start} bytes remain "
                f"({total} binary bytes after the {self.header_length}-byte JSON header); "
                "the body is truncated"
            )
        self.offset += size
        return self.view[start : start + size]

    def check_used(self) -> None:
        """No bytes are left over: the sizes the inputs declared add up to the binary part."""
        total = len(self.view)
        if self.offset != total:
            raise V2Error(
                f"{total - self.offset} bytes left over after the last binary tensor: the "
                f"inputs' binary_data_size values add up to {self.offset} of the {total} bytes "
                f"after the {self.header_length}-byte JSON header"
            )


def split_body(body: bytes, header_value: int | str | None) -> tuple[bytes, BinaryData]:
    """The JSON header's bytes and the binary data after it (none without the header)."""
    hlen = header_length(header_value, len(body))
    view = memoryview(body)
    if hlen is None:
        return bytes(view), BinaryData(view[0:0], None)
    return bytes(view[:hlen]), BinaryData(view[hlen:], hlen)


def binary_tensor(name: str, spec: TensorSpec, buf: memoryview, shape: list[int], count: int):
    """Input ``name``'s array from its raw bytes: ``count`` elements of its datatype."""
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
        if family(dt) == "FP":
            check_finite(name, dt, arr)
    return arr.reshape(shape)
