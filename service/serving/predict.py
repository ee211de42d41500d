"""BentoML's ``/predict``, as a plain function of the data plane (tested in process).

``{"model": "digits-cnn", "inputs": [[...8x8...]]}`` -> ``{"model", "variant", "outputs"}``
(plus ``labels`` for a task model). Client errors answer ``{"error": message}`` with their
status, the shape ``/docs.json`` declares, and are counted, not logged: the BentoML method
returns them as a response instead of raising (BentoML logs every raised error with its
traceback at ERROR). Outputs are finite numbers (JSON has no NaN).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.serving.dataplane import DataPlane
from service.serving.errors import BadRequest, ServiceError


async def predict(plane: DataPlane, model: Any, inputs: Any) -> tuple[int, dict]:
    """``(status, body)`` of ``POST /predict``; never raises a :class:`ServiceError`."""
    name = model if isinstance(model, str) else ""
    try:
        if not isinstance(model, str):
            raise BadRequest(f"model: expected a model name (string), got {type(model).__name__}")
        served = plane.served(model)
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                rows = served.adapter.from_json(inputs)
        except (TypeError, ValueError, OverflowError, RecursionError) as err:
            raise BadRequest(f"inputs: not a list of the model's inputs ({err})") from None
        if rows.dtype.kind == "f" and not np.isfinite(rows).all():
            limit = float(np.finfo(rows.dtype).max)
            raise BadRequest(
                f"inputs: values must be finite numbers within +/-{limit:.7g} "
                f"({rows.dtype.name}); NaN, infinity and larger numbers are refused"
            )
        out, active = await plane.infer(model, rows)
        out = np.asarray(out)
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise BadRequest(
                "the model's output for these inputs holds NaN or infinity, which JSON cannot "
                "carry; send inputs in the model's range"
            )
    except ServiceError as err:
        if err.status < 500:
            plane.count_client_error(name)
        return err.status, {"error": err.message}
    answer = {"model": model, "variant": active.variant, "outputs": out.tolist()}
    labels = getattr(served.adapter, "labels", None)
    if labels:  # a task model: the class names of the best scores
        answer["labels"] = [labels[i] for i in out.argmax(1).tolist()] if len(out) else []
    return 200, answer
