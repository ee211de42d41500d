"""Checks that tensor values pass however they arrived (JSON lists or binary tensor data)."""

from __future__ import annotations

import numpy as np

from service.serving.v2.schema import V2Error


def family(datatype: str) -> str:
    """``BOOL``, ``INT`` (signed and unsigned) or ``FP``: the values a datatype accepts."""
    if datatype == "BOOL":
        return "BOOL"
    if datatype.startswith(("INT", "UINT")):
        return "INT"
    return "FP"


def check_finite(name: str, datatype: str, arr: np.ndarray) -> None:
    """Floating inputs are finite and within their datatype's range (1e39 is no FP32)."""
    bad = arr.size - int(np.isfinite(arr).sum())
    if bad:
        limit = float(np.finfo(arr.dtype).max)
        raise V2Error(
            f"input '{name}' ({datatype}): values must be finite numbers within +/-{limit:.7g}; "
            f"{bad} of {arr.size} are not (NaN, infinity, or out of {datatype}'s range)"
        )
