"""A variant answers in its original's output type, whatever form serves it.

Every family the project compresses (:mod:`tests.integration.hf_tiny`, plus a plain module
answering a tuple) in every form the search can serve: torch int8, bfloat16, ONNX Runtime fp32
and int8 (and that graph saved and loaded back from a plan), and packed tokens where the model
packs. Each answer has the original's type, the same tensor fields in the same order, and the
same shapes. A key/value cache object is not a tensor a stateless forward can serve: such a
field is the one difference allowed, and only for the ONNX Runtime forms.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compression.core.inputs import call, index, main_output
from compression.forms import packing, precision, runtimes

from .hf_tiny import FAMILIES, build

pytestmark = pytest.mark.integration


def _fields(answer) -> list[tuple[str, tuple[int, ...] | str]]:
    """(name, shape) of every tensor in an answer, in order; its type's name for the rest."""
    if isinstance(answer, torch.Tensor):
        return [("", tuple(answer.shape))]
    if isinstance(answer, dict):  # also a ModelOutput
        items = list(answer.items())
    else:
        items = [(str(i), v) for i, v in enumerate(answer)]
    out = []
    for name, value in items:
        if isinstance(value, torch.Tensor):
            out.append((name, tuple(value.shape)))
        elif isinstance(value, tuple | list | dict):
            out += [(f"{name}.{n}", s) for n, s in _fields(value)]
        else:
            out.append((name, type(value).__name__))
    return out


def _tensor_fields(answer) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, s) for n, s in _fields(answer) if isinstance(s, tuple)]


def _assert_answers_like(original, answer, form: str, tensors_only: bool = False) -> None:
    assert type(answer) is type(original), f"{form}: {type(answer)} != {type(original)}"
    want = _tensor_fields(original) if tensors_only else _fields(original)
    got = _tensor_fields(answer) if tensors_only else _fields(answer)
    assert got == want, f"{form}: fields {got} != {want}"


def _forms(model: nn.Module, x, other) -> dict[str, tuple[nn.Module, bool]]:
    """Each form the search may serve: (module, tensor fields only)."""
    forms = {
        "torch int8": (precision.apply(model, "float32", "int8-dynamic"), False),
        "bfloat16": (precision.apply(model, "bfloat16", "none"), False),
    }
    found, notes = runtimes.candidates(model, x, [other], threads=2)
    for label, module in found:
        forms[label] = (module, True)
    if packing.why_not(model, x) is None:
        forms["packed"] = (packing.served(model), False)
    forms["_ort_notes"] = notes  # type: ignore[assignment]
    return forms


@pytest.mark.parametrize("family", FAMILIES)
def test_every_form_answers_like_the_original(family, tmp_path):
    model, batch = build(family)
    x, other = batch(4, seed=1), batch(3, seed=2)
    with torch.inference_mode():
        original = call(model, x)
    forms = _forms(model, x, other)
    notes = forms.pop("_ort_notes")
    assert {"onnxruntime-fp32", "onnxruntime-int8"} <= set(forms), notes
    for form, (module, tensors_only) in forms.items():
        with torch.inference_mode():
            answer = call(module, x)
        _assert_answers_like(original, answer, f"{family} {form}", tensors_only)
        if form == "onnxruntime-fp32":  # the graph's answer, saved and loaded from a plan
            plan = runtimes.save_onnx(tmp_path, module)
            again = runtimes.load_onnx(tmp_path, plan, threads=2)
            with torch.inference_mode():
                reloaded = call(again, x)
            _assert_answers_like(original, reloaded, f"{family} {form} reloaded", True)
            assert torch.equal(main_output(reloaded), main_output(answer))
            diff = (main_output(answer) - main_output(original)).abs().max()
            assert diff < runtimes.EXPORT_ATOL, f"{family}: |ort - torch| {float(diff):.3g}"


class _TwoHeads(nn.Module):
    """A plain module answering a tuple: (scores, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        h = self.body(x)
        return self.head(h), h


def test_a_tuple_stays_a_tuple(tmp_path):
    torch.manual_seed(0)
    model, x = _TwoHeads().eval(), torch.randn(8, 16)
    with torch.inference_mode():
        original = model(x)
    forms = _forms(model, x, index(x, slice(0, 3)))
    forms.pop("_ort_notes")
    assert {"onnxruntime-fp32", "onnxruntime-int8"} <= set(forms)
    for form, (module, _) in forms.items():
        with torch.inference_mode():
            answer = module(x)
        _assert_answers_like(original, answer, form)
        assert torch.allclose(answer[1], original[1], atol=0.05), form
