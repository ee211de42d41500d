"""The JSON of a request: the document itself, and tensors whose ``data`` is a JSON list."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from service.serving.v2.schema import HEADER_LENGTH, NUMPY_DTYPES, TensorSpec, V2Error, shape_str
from service.serving.v2.text import not_text
from service.serving.v2.values import check_finite, family

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


def _reject_constant(token: str):
    raise V2Error(
        f"request JSON holds {token}, which is not a JSON number; send finite numbers "
        "(binary tensor data carries IEEE values, but inputs must be finite too)"
    )


def load_header(raw: bytes, header_length: int | None, content_type: str | None) -> dict:
    """The request's JSON object (the whole body, or its header of ``header_length`` bytes)."""
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


def _utf8_strings(name: str, data: list) -> list[bytes]:
    """BYTES elements from JSON strings, as UTF-8; the element that is no valid text is named."""
    out: list[bytes] = []
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
    return out


def _exact_ints(data: list) -> np.ndarray | None:
    """A flat object array of Python ints when every element is an integer (numpy infers
    float64 or object for integers that fit no single int64/uint64), else None."""
    leaves = list(_leaves(data))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in leaves):
        out = np.empty(len(leaves), dtype=object)
        out[:] = leaves
        return out
    return None


def _count_error(name: str, shape: list[int], count: int, got: int) -> V2Error:
    return V2Error(
        f"input '{name}': shape {shape_str(shape)} needs {count} elements, data has {got}"
    )


def json_tensor(name: str, spec: TensorSpec, data: Any, shape: list[int], count: int):
    """Input ``name``'s array from its JSON ``data``: ``count`` values of its datatype."""
    if not isinstance(data, list):
        raise V2Error(
            f"input '{name}': 'data' must be a (flat or nested) list of {count} values, "
            f"got {type(data).__name__}"
        )
    if spec.datatype == "BYTES":
        items = _utf8_strings(name, data)
        if len(items) != count:
            raise _count_error(name, shape, count, len(items))
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    return _number_tensor(name, spec.datatype, data, shape, count)


def _number_tensor(name: str, dt: str, data: list, shape: list[int], count: int):
    try:
        raw = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise V2Error(
            f"input '{name}': 'data' must be a flat or regularly nested list of numbers: {e}"
        ) from None
    kinds, wanted = _JSON_KINDS[family(dt)]
    exact = None
    if raw.size and family(dt) == "INT" and raw.dtype.kind in "fO":
        exact = _exact_ints(data)
        raw = raw if exact is None else exact
    if raw.size and exact is None and raw.dtype.kind not in kinds:
        got = _KIND_NAMES.get(raw.dtype.kind, str(raw.dtype))
        raise V2Error(f"input '{name}' ({dt}): JSON data must be {wanted}, got {got}")
    if raw.size != count:
        raise _count_error(name, shape, count, raw.size)
    target = NUMPY_DTYPES[dt]
    if raw.size and family(dt) == "INT":
        info = np.iinfo(target)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < info.min or hi > info.max:
            raise V2Error(
                f"input '{name}' ({dt}): values must lie in [{info.min}, {info.max}], "
                f"got values in [{lo}, {hi}]"
            )
    with np.errstate(over="ignore", invalid="ignore"):
        out = raw.astype(target)
    if family(dt) == "FP":
        check_finite(name, dt, out)
    return out.reshape(shape)
