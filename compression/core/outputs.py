"""A model's answer as a structure of tensors: described once, flattened for a runtime that only
returns tensors (an ONNX Runtime session), rebuilt in the original's type.

A variant must answer like its original whatever runtime serves it: a caller's code written
against ``model(**batch).last_hidden_state`` or ``logits, = model(x)`` keeps working on the
variant. :func:`describe` records the shape of an answer (a tensor; a tuple, list or dict of
answers; a Hugging Face ``ModelOutput`` with the fields it filled) as plain JSON, which a plan
can carry; :func:`leaves` lists its tensors in a fixed order and :func:`rebuild` puts tensors
in that order back into the described structure.

What is not a tensor (a key/value cache object, a None) is not served by a stateless forward:
such a field is left out of the description and comes back unset.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import torch

Spec = dict[str, Any]


def _class_path(value: object) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_model_output(value: object) -> bool:
    # transformers.utils.ModelOutput: an OrderedDict with a dataclass's fields and to_tuple
    return isinstance(value, dict) and hasattr(value, "to_tuple")


def describe(out: Any) -> Spec:
    """The structure of ``out`` as JSON: kinds, field names and which leaves are tensors."""
    if isinstance(out, torch.Tensor):
        return {"kind": "tensor"}
    if _is_model_output(out):
        fields = {k: describe(v) for k, v in out.items()}
        return {"kind": "model_output", "class": _class_path(out), "fields": _kept(fields)}
    if isinstance(out, dict):
        return {"kind": "dict", "fields": _kept({str(k): describe(v) for k, v in out.items()})}
    if isinstance(out, tuple | list):
        kind = "list" if isinstance(out, list) else "tuple"
        return {"kind": kind, "items": [describe(v) for v in out]}
    return {"kind": "none"}


def _kept(fields: dict[str, Spec]) -> dict[str, Spec]:
    return {k: v for k, v in fields.items() if v["kind"] != "none"}


def leaves(out: Any, spec: Spec) -> list[torch.Tensor]:
    """The tensors of ``out`` in the order of ``spec`` (what an exported graph returns)."""
    kind = spec["kind"]
    if kind == "tensor":
        return [out]
    if kind in ("model_output", "dict"):
        return [t for k, s in spec["fields"].items() for t in leaves(out[k], s)]
    if kind in ("tuple", "list"):
        return [t for v, s in zip(out, spec["items"], strict=True) for t in leaves(v, s)]
    return []


def count(spec: Spec) -> int:
    """How many tensors an answer of ``spec`` holds."""
    kind = spec["kind"]
    if kind == "tensor":
        return 1
    if kind in ("model_output", "dict"):
        return sum(count(s) for s in spec["fields"].values())
    if kind in ("tuple", "list"):
        return sum(count(s) for s in spec["items"])
    return 0


def rebuild(spec: Spec, tensors: list[torch.Tensor]) -> Any:
    """``tensors`` (in :func:`leaves` order) put back into the structure ``spec`` describes."""
    if len(tensors) != count(spec):
        raise ValueError(f"{len(tensors)} tensors for an answer of {count(spec)}")
    return _rebuild(spec, iter(tensors))


def _rebuild(spec: Spec, tensors: Iterator[torch.Tensor]) -> Any:
    kind = spec["kind"]
    if kind == "tensor":
        return next(tensors)
    if kind in ("tuple", "list"):
        items = [_rebuild(s, tensors) for s in spec["items"]]
        return items if kind == "list" else tuple(items)
    if kind == "none":
        return None
    fields = {k: _rebuild(s, tensors) for k, s in spec["fields"].items()}
    if kind == "dict":
        return fields
    return answer_class(spec)(**fields)


def answer_class(spec: Spec) -> type:
    """The ``ModelOutput`` class a ``model_output`` spec names (a plain dict where it cannot be
    imported, e.g. a class defined inside a function)."""
    module, _, name = spec["class"].rpartition(".")
    try:
        cls = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        return dict
    return cls if isinstance(cls, type) else dict


def main_leaf(spec: Spec) -> int:
    """The position among :func:`leaves` of the tensor :func:`compression.core.inputs.main_output`
    picks (``logits``, else ``last_hidden_state``, else the first)."""
    if spec["kind"] in ("model_output", "dict"):
        names = list(spec["fields"])
        for key in ("logits", "last_hidden_state"):
            if key in names and spec["fields"][key]["kind"] == "tensor":
                return sum(count(spec["fields"][n]) for n in names[: names.index(key)])
    return 0
